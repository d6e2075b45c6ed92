"""dlrm with SOAP: `python main.py --config=configs/dlrm_soap.py:tiny`.

Betas (0.95, 0.95), statistics EMA 0.95, eps 1e-8 and eigenbases every 10 steps: Vyas et al.
2024 (SOAP, arXiv 2409.11321) and the authors' reference (github.com/nikhilvyas/SOAP). An
embedding table with more rows than max_precond_dim is rotated along its embedding dimension
only (the reference's one-sided rule): in `paper` (10000, the reference's default) every large
Criteo table; in `tiny` (1024, as Shampoo's tiny skip threshold) most tables. Learning rate
Adam's of this task (1e-3), untuned for SOAP.
"""

from configs import _dlrm
from configs import base


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  tiny = size == 'tiny'
  config.optimizer = base.optimizer(
      'soap', learning_rate=1e-3,
      b1=0.95, b2=0.95, shampoo_beta=0.95, eps=1e-8,  # SOAP paper / reference defaults
      precondition_frequency=10,                       # SOAP paper
      max_precond_dim=1024 if tiny else 10000,         # paper: reference default
      block_size=128 if tiny else 10000,               # reference: no blocking
      merge_small_dims_block_size=128 if tiny else 1)  # reference: merge_dims=False
  return config
