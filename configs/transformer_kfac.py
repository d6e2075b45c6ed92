"""transformer with K-FAC (kfac-jax): `python main.py --config=configs/transformer_kfac.py:tiny`.

Every projection is a 2-D dense layer (tasks/layers.py), so kfac-jax gives each a
Kronecker block; the shared embedding is a gather it does not match and gets a
diagonal block. Curvature from the categorical model of the decoder's logits.

Tiny: a large learning rate held in check by the norm constraint (KL clipping). Eval
log-perplexity after 300 steps (Adam 1.73, Shampoo 0.91): lr 0.01 / constraint 1e-3: 6.36;
0.03 / 0.01: 3.62; 0.1 / 0.01: 2.47; 0.3 / 0.01: 1.26; 1.0 / 0.01: 0.64; 3.0 / 0.01: 1.97;
0.1 / 0.1: 1.18; 1.0 / 0.1: 1.95. `paper` uses the same values, untuned at that scale, and gives
the feed-forward layers diagonal blocks, for memory.
"""

from configs import _transformer
from configs import base


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  config.optimizer = base.optimizer(
      'kfac', learning_rate=1.0, damping=1e-3, curvature_ema=0.95, curvature_update_period=1,
      inverse_update_period=10, momentum=0.9, norm_constraint=0.01)
  if size != 'tiny':
    # our choice: the 8192-wide factors of the feed-forward layers get diagonal blocks. With them
    # Kronecker-factored the step needs 17.7 GiB of temporaries a TPU v3 core (docs/kfac.md)
    config.optimizer.max_factor_dim = 4096
  return config
