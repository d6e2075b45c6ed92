"""transformer with Adam: `python main.py --config=configs/transformer_adam.py:tiny`.

Vaswani et al. 2017, Sec. 5.3: beta2 0.98, eps 1e-9, warm-up then inverse square root decay,
peaking at d_model^-0.5 x warmup_steps^-0.5 (4.9e-4 for d_model 1024 and 4000 warm-up steps).
"""

from configs import _transformer
from configs import base


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  config.optimizer = base.optimizer(
      'adam',
      # Vaswani et al. 2017, Sec. 5.3: the rate's peak, d_model^-0.5 x warmup_steps^-0.5
      learning_rate=3e-3 if size == 'tiny' else 1024 ** -0.5 * 4000 ** -0.5,
      b1=0.9, b2=0.98, eps=1e-9)  # Vaswani et al. 2017, Sec. 5.3
  return config
