"""bert with Adagrad: `python main.py --config=configs/bert_adagrad.py:tiny`."""

import optimizers
from configs import _bert


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  config.optimizer = optimizers.config('adagrad', learning_rate=0.3)
  return config
