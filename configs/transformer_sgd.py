"""transformer with SGD (heavy-ball momentum): `python main.py --config=configs/transformer_sgd.py:tiny`."""

import optimizers
from configs import _transformer


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  config.optimizer = optimizers.config('sgd', learning_rate=0.3, momentum=0.9, grad_clip_norm=1.0)
  return config
