"""bert with Shampoo: `python main.py --config=configs/bert_shampoo.py:tiny`.

As for the Transformer: RMSprop-normalized grafting, roots every 10 (tiny) / 100 steps
after a first-order start, small dimensions merged only up to one block. The token
embedding (vocabulary x features) gets the graft direction only when its vocabulary
exceeds `skip_preconditioning_dim_size_gt` (4096: so in `paper`, not in `tiny`). The paper's
BERT hyperparameters are not confirmed: every `paper` value here is this project's choice.
"""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  tiny = size == 'tiny'
  config.optimizer = base.optimizer(
      'shampoo',
      # paper: our choice, Adam's (Devlin et al. 2019), untuned for Shampoo; tiny: chosen by its runs to target
      learning_rate=1e-3 if tiny else 1e-4,
      beta1=0.9, beta2=0.99, weight_decay=0.01,
      moving_average_for_momentum=False,  # tuned with the reference's summed momentum, m = beta1 m + u
      block_size=128 if tiny else 1024,  # our choice: 1024 = BERT-Large's width, one block a side
      merge_small_dims_block_size=128 if tiny else 1024,  # our choice: merge only up to one block
      graft_type='rmsprop_normalized',
      start_preconditioning_step=100 if tiny else 1000,  # our choice: after the first-order start settles
      preconditioning_compute_steps=10 if tiny else 100)  # our choice: roots every 100 steps bound their cost
  return config
