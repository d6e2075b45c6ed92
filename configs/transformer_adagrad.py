"""transformer with Adagrad: `python main.py --config=configs/transformer_adagrad.py:tiny`.

Tiny, eval log-perplexity after 300 steps: lr 0.1: 3.51, 0.3: 2.74, 0.5: 2.41, 1.0: 2.62.
"""

from configs import _transformer
from configs import base


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  config.optimizer = base.optimizer('adagrad', learning_rate=0.5)
  return config
