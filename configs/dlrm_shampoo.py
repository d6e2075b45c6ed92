"""dlrm with Shampoo: `python main.py --config=configs/dlrm_shampoo.py:tiny`.

Embedding tables with more rows than `skip_preconditioning_dim_size_gt` (1024 for tiny, so
that, as with the paper's 40M-row tables, most tables are above it) never get row
statistics; with `precondition_embeddings` (on) their embedding dimension still gets one
statistic per table, as the paper reports helps; off, they get the graft direction only.
Learning rate 1e-4: momentum here sums (no 1 - beta1 factor), so with beta1 0.9 a step is
about 10x the grafted RMSprop direction, i.e. about Adam at 1e-3. Tiny: AUC 0.78 at step
1250 with 1e-4, 2000 with 3e-4, 2500 with 1e-3.
"""

from configs import _dlrm
from configs import base


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  tiny = size == 'tiny'
  config.optimizer = base.optimizer(
      'shampoo', learning_rate=1e-4, beta1=0.9, beta2=0.999,
      moving_average_for_momentum=False,  # tuned with the reference's summed momentum, m = beta1 m + u
      block_size=128 if tiny else 1024,  # our choice: the top MLP's 1024 units, one block a side
      # our choice: the 40M-row tables get no row statistics (an embedding dimension of 128 does)
      skip_preconditioning_dim_size_gt=1024 if tiny else 4096,
      precondition_embeddings=True,
      merge_small_dims_block_size=128 if tiny else 1024,  # our choice: merge only up to one block
      graft_type='rmsprop_normalized',
      start_preconditioning_step=100 if tiny else 1000,  # our choice: after the first-order start settles
      preconditioning_compute_steps=10 if tiny else 100)  # our choice: roots every 100 steps bound their cost
  return config
