"""dlrm with Adagrad: `python main.py --config=configs/dlrm_adagrad.py:tiny` (untuned)."""

from configs import _dlrm
from configs import base


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  config.optimizer = base.optimizer('adagrad', learning_rate=0.05)
  return config
