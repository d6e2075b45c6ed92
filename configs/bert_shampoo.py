"""bert with Shampoo: `python main.py --config=configs/bert_shampoo.py:tiny`.

As for the Transformer: RMSprop-normalized grafting, roots every 10 (tiny) / 100 steps
after a first-order start, small dimensions merged only up to one block. The token
embedding (vocabulary x features) gets the graft direction only when its vocabulary
exceeds `skip_preconditioning_dim_size_gt` (4096: so in `paper`, not in `tiny`).
"""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  tiny = size == 'tiny'
  config.optimizer = base.optimizer(
      'shampoo', learning_rate=2e-3 if tiny else 1e-4, beta1=0.9, beta2=0.99, weight_decay=0.01,
      block_size=128 if tiny else 1024, merge_small_dims_block_size=128 if tiny else 1024,
      graft_type='rmsprop_normalized',
      start_preconditioning_step=100 if tiny else 1000,
      preconditioning_compute_steps=10 if tiny else 100)
  return config
