"""lp_regression with AdamW: `python main.py --config=configs/lp_regression_adamw.py:tiny`.

Adam's rate (lp_regression_adam.py) with decoupled weight decay 1e-4 on the kernels: this
project's choice (the task has no published AdamW setting), untuned at either size.
"""

from configs import _lp_regression
from configs import base


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = base.optimizer('adamw', learning_rate=0.01, weight_decay=1e-4)
  return config
