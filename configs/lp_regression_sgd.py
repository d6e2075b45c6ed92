"""lp_regression with SGD: `python main.py --config=configs/lp_regression_sgd.py:tiny`."""

from configs import _lp_regression
from configs import base


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = base.optimizer('sgd', learning_rate=0.01)
  return config
