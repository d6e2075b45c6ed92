"""lp_regression with ADAM: `python main.py --config=configs/lp_regression_adam.py:tiny`."""

import optimizers
from configs import _lp_regression


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = optimizers.config('adam', learning_rate=0.01)
  return config
