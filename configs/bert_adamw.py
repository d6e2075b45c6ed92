"""bert with AdamW: `python main.py --config=configs/bert_adamw.py:tiny`.

BERT's own optimizer (Devlin et al. 2019): Adam with decoupled weight decay 0.01 (not on biases
and norms), b1 0.9, b2 0.999, eps 1e-6, learning rate 1e-4; the `tiny` rate is bert_adam.py's.
"""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  # paper: BERT's own Adam (Devlin et al. 2019, Sec. A.2)
  config.optimizer = base.optimizer('adamw', learning_rate=5e-3 if size == 'tiny' else 1e-4,
                                    b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)  # Devlin et al. 2019, Sec. A.2: BERT's Adam
  return config
