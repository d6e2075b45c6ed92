"""bert with Muon: `python main.py --config=configs/bert_muon.py:tiny`.

Keller Jordan's Muon README: rate 0.02 for the hidden matrices, weight decay 0.01; the token
(also the masked-LM output), position and segment embeddings, the next-sentence classifier,
biases and norm scales take Adam with BERT's setting (bert_adam.py: eps 1e-6) at Adam's rate,
learning_rate x adam_learning_rate_ratio.
"""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  adam_learning_rate = 5e-3 if size == 'tiny' else 1e-4  # Devlin et al. 2019, Sec. A.2: BERT's Adam rate
  config.optimizer = base.optimizer('muon', learning_rate=0.02, adam_learning_rate_ratio=adam_learning_rate / 0.02,
                                    b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)
  return config
