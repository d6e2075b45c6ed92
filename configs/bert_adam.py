"""bert with Adam (AdamW, decoupled weight decay 0.01 on matrices, as BERT): `python main.py --config=configs/bert_adam.py:tiny`.

`paper`: Devlin et al. 2019's optimizer setting (Sec. A.2: Adam, lr 1e-4, b1 0.9, b2 0.999, weight
decay 0.01), set there for batch 256 and not tuned here for the 32K batch.
"""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  config.optimizer = base.optimizer(
      'adam',
      learning_rate=5e-3 if size == 'tiny' else 1e-4,  # Devlin et al. 2019, Sec. A.2 (at batch 256)
      b1=0.9, b2=0.999,   # Devlin et al. 2019, Sec. A.2
      eps=1e-6,           # BERT reference README / code: AdamWeightDecay epsilon 1e-6
      weight_decay=0.01)  # Devlin et al. 2019, Sec. A.2
  return config
