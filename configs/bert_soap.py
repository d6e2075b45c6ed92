"""bert with SOAP: `python main.py --config=configs/bert_soap.py:tiny`.

Betas (0.95, 0.95), statistics EMA 0.95, eps 1e-8, eigenbases every 10 steps and decoupled
weight decay 0.01: Vyas et al. 2024 (SOAP, arXiv 2409.11321) and the authors' reference
(github.com/nikhilvyas/SOAP, README: `SOAP(lr=3e-3, betas=(.95, .95), weight_decay=.01,
precondition_frequency=10)`). `paper`: the 30522-token embedding is above max_precond_dim
(10000), so it is rotated along its feature dimension only, as the reference does; blocks of
1024 as bert_shampoo.py (the reference does not block);
learning rate BERT's Adam (Devlin et al. 2019: 1e-4), untuned for SOAP. `tiny`: blocks of 128
and merging up to 128 as Shampoo's tiny config, learning rate Adam's.
"""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  tiny = size == 'tiny'
  config.optimizer = base.optimizer(
      'soap', learning_rate=5e-3 if tiny else 1e-4,    # paper: Devlin et al. 2019 (BERT's Adam)
      weight_decay=0.01,                               # SOAP README
      b1=0.95, b2=0.95, shampoo_beta=0.95, eps=1e-8,  # SOAP paper / reference defaults
      precondition_frequency=10,                       # SOAP paper
      max_precond_dim=10000,                           # reference default
      # our choice: blocks of 1024 as the Shampoo config's (unblocked as the reference, the
      # Transformer-Big SOAP step needed 69 GiB of temporaries on a v3 core)
      block_size=128 if tiny else 1024,
      merge_small_dims_block_size=128 if tiny else 1)  # reference: merge_dims=False
  return config
