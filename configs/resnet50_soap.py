"""resnet50 with SOAP: `python main.py --config=configs/resnet50_soap.py:tiny`.

Not in the SOAP paper (Vyas et al. 2024, arXiv 2409.11321, trains language models only): its
betas (0.95, 0.95), statistics EMA 0.95, eps 1e-8 and eigenbases every 10 steps, and the
authors' reference (github.com/nikhilvyas/SOAP) for convolutions: a [3, 3, c_in, c_out] kernel
gets a basis per dimension, none merged (merge_dims=False). Run for the same 2512 steps as the
Shampoo paper's first-order ResNet-50 baselines, with Adam's learning rate and decoupled
weight decay 1e-4 (untuned; `tiny`'s rate chosen by its runs to target, docs/measurements.md).
`tiny`: blocks of 128 as Shampoo's tiny config.
"""

from configs import _resnet50
from configs import base


def get_config(size: str = 'paper'):
  config = _resnet50.get_config(size, paper_steps=2512)  # Anil et al. 2020's first-order baselines
  tiny = size == 'tiny'
  config.optimizer = base.optimizer(
      'soap',
      # paper: our choice: Adam's ResNet-50 rate, untuned; tiny: chosen by its runs to target (1e-3 missed)
      learning_rate=3.16e-3 if tiny else 1e-3,
      weight_decay=1e-4,
      b1=0.95, b2=0.95, shampoo_beta=0.95, eps=1e-8,  # SOAP paper / reference defaults
      precondition_frequency=10,                       # SOAP paper
      max_precond_dim=10000,                           # reference default
      block_size=128 if tiny else 10000,               # reference: no blocking
      merge_small_dims_block_size=1)                   # reference: merge_dims=False
  return config
