"""transformer with Adagrad: `python main.py --config=configs/transformer_adagrad.py:tiny`."""

import optimizers
from configs import _transformer


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  config.optimizer = optimizers.config('adagrad', learning_rate=0.1)
  return config
