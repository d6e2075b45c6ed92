"""lp_regression with ADAGRAD: `python main.py --config=configs/lp_regression_adagrad.py:tiny`.

`tiny` runs 600 steps where the other lp_regression configs run 400: Adagrad's effective rate
falls as 1/sqrt(t), and at 400 steps one seed of three ends at eval loss 0.00600, a hair above
the 0.006 target, at every rate from 0.1 to 0.2 (with 600 steps seeds 0, 1, 2 reach it at 250,
425 and 175).
"""

from configs import _lp_regression
from configs import base


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = base.optimizer('adagrad', learning_rate=0.1)
  if size == 'tiny':
    config.num_steps = 600  # our choice: the slowest seed reaches the target at 425 (docstring)
  return config
