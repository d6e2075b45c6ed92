"""bert with Adagrad: `python main.py --config=configs/bert_adagrad.py:tiny`."""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  config.optimizer = base.optimizer('adagrad', learning_rate=0.3)
  return config
