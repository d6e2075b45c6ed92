"""dlrm with SGD (momentum): `python main.py --config=configs/dlrm_sgd.py:tiny` (untuned)."""

from configs import _dlrm
from configs import base


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  config.optimizer = base.optimizer('sgd', learning_rate=0.1, momentum=0.9)
  return config
