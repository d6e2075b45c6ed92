"""transformer with Adam: `python main.py --config=configs/transformer_adam.py:tiny`.

Vaswani et al. 2017: beta2 0.98, eps 1e-9, warm-up then inverse square root decay.
"""

from configs import _transformer
from configs import base


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  config.optimizer = base.optimizer('adam', learning_rate=3e-3 if size == 'tiny' else 1e-3,
                                    b1=0.9, b2=0.98, eps=1e-9)
  return config
