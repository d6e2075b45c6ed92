"""resnet50 with K-FAC (kfac-jax): `python main.py --config=configs/resnet50_kfac.py:tiny`.

kfac-jax gives every convolution a Kronecker block and every batch-norm scale and
shift a diagonal one; curvature from the categorical model of the logits. Not in the
paper's ResNet comparison: same 2512 steps as its first-order baselines (untuned). Slow on
CPU: about 10 s a step for `tiny` on 2 cores (curvature of every convolution at every step;
kfac-jax requires curvature_update_period 1 here), so the 600 tiny steps take over an hour.
"""

import optimizers
from configs import _resnet50


def get_config(size: str = 'paper'):
  config = _resnet50.get_config(size, paper_steps=2512)
  config.optimizer = optimizers.config(
      'kfac', learning_rate=0.1, damping=1e-3, curvature_ema=0.95, curvature_update_period=1,
      inverse_update_period=10, momentum=0.9, norm_constraint=0.01, weight_decay=1e-4)
  return config
