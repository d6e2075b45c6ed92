"""dlrm with K-FAC (kfac-jax): `python main.py --config=configs/dlrm_kfac.py:tiny` (untuned).

The MLP layers get Kronecker blocks; the embedding gathers get diagonal blocks.
"""

from configs import _dlrm
from configs import base


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  config.optimizer = base.optimizer(
      'kfac', learning_rate=0.1, damping=1e-3, curvature_ema=0.95, curvature_update_period=1,
      inverse_update_period=10, momentum=0.9, norm_constraint=0.01)
  return config
