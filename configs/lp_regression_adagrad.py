"""lp_regression with ADAGRAD: `python main.py --config=configs/lp_regression_adagrad.py:tiny`."""

import optimizers
from configs import _lp_regression


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = optimizers.config('adagrad', learning_rate=0.1)
  return config
