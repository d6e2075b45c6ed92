"""lp_regression with SOAP: `python main.py --config=configs/lp_regression_soap.py:tiny`.

Depth 1 has one [features, 1] kernel: its size-1 dimension is dropped, so SOAP runs Adam in
the eigenbasis of one full-matrix statistic of the weight vector, the setting where a rotated
basis matters most on correlated features. Betas, eps, statistics EMA and the refresh every 10
updates: Vyas et al. 2024 (SOAP, arXiv 2409.11321) and the authors' reference
(github.com/nikhilvyas/SOAP). Learning rate: this project's choice, Adam's for this task.
"""

from configs import _lp_regression
from configs import base


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = base.optimizer(
      'soap', learning_rate=0.01,
      b1=0.95, b2=0.95, shampoo_beta=0.95, eps=1e-8,  # SOAP paper / reference defaults
      precondition_frequency=10)                       # SOAP paper: eigenbases every 10 steps
  return config
