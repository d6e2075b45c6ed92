"""bert with LAMB, the paper's BERT baseline: `python main.py --config=configs/bert_lamb.py:tiny`.

You et al. 2020 / the MLPerf reference: b1 0.9, b2 0.999, eps 1e-6, weight decay 0.01
(not on biases and norms). `paper` learning rate: a placeholder at the 4096 batch.
"""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  config.optimizer = base.optimizer('lamb', learning_rate=1e-2 if size == 'tiny' else 2e-3,
                                    b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)
  return config
