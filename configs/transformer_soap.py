"""transformer with SOAP: `python main.py --config=configs/transformer_soap.py:tiny`.

Betas (0.95, 0.95), statistics EMA 0.95, eps 1e-8 and eigenbases refreshed every 10 steps:
Vyas et al. 2024 (SOAP, arXiv 2409.11321; their language-model runs) and the authors' reference
(github.com/nikhilvyas/SOAP). `paper`: dims up to 10000 rotated, as the reference, but in
blocks of 1024 as transformer_shampoo.py (unblocked, Transformer-Big's 8192-wide feed-forward
kernels needed 69 GiB of temporaries per v3 core); learning rate Adam's of this
task (Vaswani et al. 2017's schedule, untuned for SOAP). `tiny`: blocks of 128 and merging up
to 128 as Shampoo's tiny config, learning rate Adam's.
"""

from configs import _transformer
from configs import base


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  tiny = size == 'tiny'
  config.optimizer = base.optimizer(
      'soap', learning_rate=3e-3 if tiny else 1e-3,    # paper: our choice: Adam's, untuned for SOAP
      b1=0.95, b2=0.95, shampoo_beta=0.95, eps=1e-8,  # SOAP paper / reference defaults
      precondition_frequency=10,                       # SOAP paper
      max_precond_dim=10000,                           # reference default
      # our choice: blocks of 1024 as the Shampoo config's (the reference's unblocked 8192-wide
      # feed-forward kernels padded to a stack per device needed 69 GiB of temporaries on a v3 core)
      block_size=128 if tiny else 1024,
      merge_small_dims_block_size=128 if tiny else 1)  # reference: merge_dims=False
  return config
