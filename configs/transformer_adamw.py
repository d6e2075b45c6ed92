"""transformer with AdamW: `python main.py --config=configs/transformer_adamw.py:tiny`.

Adam's setting (transformer_adam.py: Vaswani et al. 2017, beta2 0.98, eps 1e-9) with decoupled
weight decay 0.01 on the kernels and embedding; Vaswani et al. used none, so the decay is a
placeholder to tune.
"""

from configs import _transformer
from configs import base


def get_config(size: str = 'paper'):
  config = _transformer.get_config(size)
  # paper rate: Vaswani et al. 2017, Sec. 5.3, at its peak (d_model^-0.5 x warmup^-0.5)
  config.optimizer = base.optimizer('adamw', learning_rate=3e-3 if size == 'tiny' else 1024 ** -0.5 * 4000 ** -0.5,
                                    b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.01)
  return config
