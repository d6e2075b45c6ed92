"""dlrm with Adagrad: `python main.py --config=configs/dlrm_adagrad.py:tiny` (untuned)."""

import optimizers
from configs import _dlrm


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  config.optimizer = optimizers.config('adagrad', learning_rate=0.05)
  return config
