"""lp_regression with Muon: `python main.py --config=configs/lp_regression_muon.py:tiny`.

The model is a product of matrices with no embedding or classifier head, so every kernel
takes Muon (adam_paths empty); at depth 1 its one (features x 1) kernel gets a normalised
momentum step. Muon's rate 0.02 (Keller Jordan's Muon README), untuned here.
"""

from configs import _lp_regression
from configs import base


def get_config(size: str = 'paper'):
  config = _lp_regression.get_config(size)
  config.optimizer = base.optimizer('muon', learning_rate=0.02, adam_paths=())
  return config
