"""lp_regression with ADAGRAD: `python main.py --config=configs/lp_regression_adagrad.py:tiny`."""

from configs import _lp_regression
from configs import base


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = base.optimizer('adagrad', learning_rate=0.1)
  return config
