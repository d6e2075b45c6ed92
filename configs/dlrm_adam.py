"""dlrm with Adam: `python main.py --config=configs/dlrm_adam.py:tiny`."""

import optimizers
from configs import _dlrm


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  config.optimizer = optimizers.config('adam', learning_rate=1e-3)
  return config
