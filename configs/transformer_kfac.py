"""transformer with K-FAC (kfac-jax): `python main.py --config=configs/transformer_kfac.py:tiny`.

Every projection is a 2-D dense layer (tasks/layers.py), so kfac-jax gives each a
Kronecker block; the shared embedding is a gather it does not match and gets a
diagonal block. Curvature from the categorical model of the decoder's logits.
"""

import optimizers
from configs import _transformer


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  config.optimizer = optimizers.config(
      'kfac', learning_rate=0.01, damping=1e-3, curvature_ema=0.95, curvature_update_period=1,
      inverse_update_period=10, momentum=0.9, norm_constraint=1e-3)
  return config
