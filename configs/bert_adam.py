"""bert with Adam (AdamW, decoupled weight decay 0.01 on matrices, as BERT): `python main.py --config=configs/bert_adam.py:tiny`."""

import optimizers
from configs import _bert


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  config.optimizer = optimizers.config('adam', learning_rate=5e-3 if size == 'tiny' else 1e-4,
                                       b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)
  return config
