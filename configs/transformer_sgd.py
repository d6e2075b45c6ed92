"""transformer with SGD (heavy-ball momentum): `python main.py --config=configs/transformer_sgd.py:tiny`.

Tiny, a first guess (not tuned): eval log-perplexity 2.05 after 300 steps.
"""

from configs import _transformer
from configs import base


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  config.optimizer = base.optimizer('sgd', learning_rate=0.3, momentum=0.9, grad_clip_norm=1.0)
  return config
