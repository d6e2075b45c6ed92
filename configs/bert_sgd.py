"""bert with SGD (heavy-ball momentum): `python main.py --config=configs/bert_sgd.py:tiny`."""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  config.optimizer = base.optimizer('sgd', learning_rate=0.3, momentum=0.9, grad_clip_norm=1.0)
  return config
