"""lp_regression with Shampoo: `python main.py --config=configs/lp_regression_shampoo.py:tiny`.

Depth 1 has one [features, 1] kernel: its size-1 dimension is dropped, so Shampoo
preconditions the weight vector with one full-matrix statistic (exponent 1/2, i.e.
full-matrix Adagrad when beta2 = 1), the setting where preconditioning matters most
on correlated features.
"""

from configs import _lp_regression
from configs import base


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = base.optimizer(
      'shampoo', learning_rate=0.003, beta1=0.9, beta2=0.999, graft_type='rmsprop_normalized',
      start_preconditioning_step=10, preconditioning_compute_steps=1,
      moving_average_for_momentum=False)  # tuned with the reference's summed momentum, m = beta1 m + u
  return config
