"""dlrm with Adam: `python main.py --config=configs/dlrm_adam.py:tiny`."""

from configs import _dlrm
from configs import base


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  config.optimizer = base.optimizer('adam', learning_rate=1e-3)
  return config
