"""resnet50 with Shampoo: `python main.py --config=configs/resnet50_shampoo.py:tiny`.

`paper`: the reference implementation's ResNet-50 run, each value commented with its source:
its README's recipe (google-research scalable_shampoo README: `_ShampooHyperParams` and the text
around it) or, where the recipe leaves a value to the implementation, that of the public
reference (precondition-opt 0.3.0's distributed_shampoo, which tests/test_shampoo_reference.py
matches update for update on a ResNet-shaped tree). `tiny`: lr 0.5 and roots every 10 steps, and
this project's defaults where the reference's semantics differ (block grafting, one momentum,
decoupled decay, no rank-1 statistics, merging up to 4096).
"""

from configs import _resnet50
from configs import base

PAPER_STEPS = 1729  # README: 1729 steps to 75.9%


def get_config(size: str = 'paper'):
  config = _resnet50.get_config(size, PAPER_STEPS)
  tiny = size == 'tiny'
  shared = dict(
      beta1=0.95, beta2=0.85,            # README recipe
      matrix_epsilon=1.5e-5,             # README recipe
      weight_decay=1e-4,                 # README recipe
      start_preconditioning_step=25,     # README recipe
      block_size=128,                    # README recipe
      graft_type='sgd',                  # README recipe: LayerwiseGrafting.SGD
      nesterov=True,                     # README recipe
      exponent_override=4)               # README recipe
  if tiny:
    config.optimizer = base.optimizer('shampoo', learning_rate=0.5, preconditioning_compute_steps=10, **shared,
                                      moving_average_for_momentum=False)  # tuned with the reference's m = beta1 m + u
    return config
  config.optimizer = base.optimizer(
      'shampoo', **shared,
      learning_rate=13.0,                # README recipe
      preconditioning_compute_steps=1,   # README recipe: roots every step
      statistics_compute_steps=1,        # README recipe
      diagonal_epsilon=0.0,              # README recipe: diagonal_eps
      skip_preconditioning_dim_size_gt=8192,  # README recipe: no_preconditioning_for_layers_with_dim_gt
      # README: [3, 3, 128, 128] -> [9, 128, 128], dims merged up to the block size (best_effort_shape_interpretation)
      merge_small_dims_block_size=128,
      graft_granularity='layer',         # README recipe: LayerwiseGrafting, one graft norm per parameter
      # README: "Weight decay is not applied to bias and batch normalization variables" (rank 1 here)
      decay_rank1=False,
      weight_decay_mode='before_momentum',  # reference: decay added to the grafted direction before momentum
      precondition_rank1=True,           # reference: skips only rank-0 parameters (skip_preconditioning_rank_lt=1)
      separate_graft_momentum=True,      # reference: graft and Shampoo momenta both run from step 0
      statistics_start_at_epsilon=True,  # reference: statistics start at matrix_epsilon x I
      relative_matrix_epsilon=True,      # reference default: damping x largest eigenvalue
      moving_average_for_momentum=False)  # reference default: m = beta1 m + u
  return config
