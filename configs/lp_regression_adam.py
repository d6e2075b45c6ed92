"""lp_regression with ADAM: `python main.py --config=configs/lp_regression_adam.py:tiny`."""

from configs import _lp_regression
from configs import base


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = base.optimizer('adam', learning_rate=0.01)
  return config
