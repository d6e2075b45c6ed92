"""bert with Adam (AdamW, decoupled weight decay 0.01 on matrices, as BERT): `python main.py --config=configs/bert_adam.py:tiny`."""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  config.optimizer = base.optimizer('adam', learning_rate=5e-3 if size == 'tiny' else 1e-4,
                                    b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)
  return config
