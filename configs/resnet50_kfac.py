"""resnet50 with K-FAC (kfac-jax): `python main.py --config=configs/resnet50_kfac.py:tiny`.

kfac-jax gives every convolution a Kronecker block and every batch-norm scale and
shift a diagonal one; curvature from the categorical model of the logits. Not in the
paper's ResNet comparison: same 2512 steps as its first-order baselines (untuned).
The convolutions' curvature dominates the step on CPU: `tiny` with the factors updated
every step from the whole batch took 17.5 s a step on 2 cores (Adam: 0.08 s), so `tiny`
updates them every 10 steps from 16 of the 64 images (0.23 s a step).
"""

from configs import _resnet50
from configs import base


def get_config(size: str = 'paper'):
  # our choice: not in the paper's comparison, so the step budget of its first-order baselines
  config = _resnet50.get_config(size, paper_steps=2512)
  tiny = size == 'tiny'
  config.optimizer = base.optimizer(
      'kfac', learning_rate=0.1, damping=1e-3, curvature_ema=0.95,
      curvature_update_period=10 if tiny else 1,  # our choice: fresh curvature every step
      curvature_batch_size=16 if tiny else 0,  # our choice: 0 = the whole batch
      inverse_update_period=10, momentum=0.9, norm_constraint=0.01, weight_decay=1e-4)
  return config
