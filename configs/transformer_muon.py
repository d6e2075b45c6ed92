"""transformer with Muon: `python main.py --config=configs/transformer_muon.py:tiny`.

Keller Jordan's Muon README: rate 0.02 for the hidden matrices, weight decay 0.01; the shared
embedding (also the output projection), biases and norm scales take Adam with Adam's setting
(transformer_adam.py: beta2 0.98, eps 1e-9) at Adam's rate, learning_rate x
adam_learning_rate_ratio.
"""

from configs import _transformer
from configs import base


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  adam_learning_rate = 3e-3 if size == 'tiny' else 1024 ** -0.5 * 4000 ** -0.5  # Vaswani et al. 2017, Sec. 5.3, at its peak
  config.optimizer = base.optimizer('muon', learning_rate=0.02, adam_learning_rate_ratio=adam_learning_rate / 0.02,
                                    b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.01)
  return config
