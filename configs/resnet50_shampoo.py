"""resnet50 with Shampoo: `python main.py --config=configs/resnet50_shampoo.py:tiny`.

`paper`: every value as the paper's reference README gives it for ResNet-50 (PAPERS.md):
lr 13.0, beta1 0.95, beta2 0.85, matrix_epsilon 1.5e-5, weight decay 1e-4,
start_preconditioning_step 25, roots every step (preconditioning_compute_steps 1),
block_size 128, SGD grafting, Nesterov, exponent_override 4, 1729 steps. Not stated
there, so our defaults: relative_matrix_epsilon, momentum summed (not averaged),
decoupled weight decay on matrices only. `tiny`: lr 0.5 and roots every 10 steps.
"""

from configs import _resnet50
from configs import base

PAPER_STEPS = 1729


def get_config(size: str = 'paper'):
  config = _resnet50.get_config(size, PAPER_STEPS)
  tiny = size == 'tiny'
  config.optimizer = base.optimizer(
      'shampoo', learning_rate=0.5 if tiny else 13.0, beta1=0.95, beta2=0.85, matrix_epsilon=1.5e-5,
      weight_decay=1e-4, start_preconditioning_step=25, preconditioning_compute_steps=10 if tiny else 1,
      block_size=128, graft_type='sgd', nesterov=True, exponent_override=4)
  return config
