"""lp_regression with K-FAC: `python main.py --config=configs/lp_regression_kfac.py:tiny`.

Curvature from the squared-error (Gaussian) model of the predictions, see
tasks/losses.py: for the linear model K-FAC's factors are the input covariance
and the output-gradient variance, i.e. it whitens the correlated features.
Defaults follow kfac-jax's (damping 1e-3, factor EMA 0.95, inverses every 5 steps;
the factors are cheap here, so curvature is refreshed every step). The norm
constraint (KL clipping) caps each step's Fisher norm, which lets a larger learning
rate work. Measured on the tiny config (steps to target, eval every 5 steps):
depth 1: no constraint, best lr 0.03: 65; constraint 0.03, lr 0.05: 30 (tuned SGD: 75).
Depth 2 needs it: without it every lr from 0.003 to 0.1 diverged (damping 1e-3 or 1e-2),
as the small initial layers have tiny factors whose inverses blow steps up; use
`--config.optimizer.norm_constraint=0.01 --config.optimizer.learning_rate=0.01` (75).
Adaptive damping (`adaptive_damping=True`) does not change these: depth 1 still 30 (65
without the constraint), and it does not stop depth 2 diverging without one (README).
"""

from configs import _lp_regression
from configs import base


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = base.optimizer(
      'kfac', learning_rate=0.05, damping=1e-3, curvature_ema=0.95, curvature_update_period=1,
      inverse_update_period=5, momentum=0.9, norm_constraint=0.03)
  return config
