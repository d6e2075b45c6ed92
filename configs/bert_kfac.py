"""bert with K-FAC (kfac-jax): `python main.py --config=configs/bert_kfac.py:tiny`.

Every projection is a 2-D dense layer, so kfac-jax gives each a Kronecker block; the
embeddings (token, position, segment) are gathers and get diagonal blocks. Curvature
from the categorical models of the masked-LM and next-sentence logits. Values as for
the tiny Transformer (norm constraint as KL clipping), untuned here.
"""

from configs import _bert
from configs import base


def get_config(size: str = 'paper'):
  config = _bert.get_config(size)
  config.optimizer = base.optimizer(
      'kfac', learning_rate=1.0, damping=1e-3, curvature_ema=0.95, curvature_update_period=1,
      inverse_update_period=10, momentum=0.9, norm_constraint=0.01)
  return config
