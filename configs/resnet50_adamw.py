"""resnet50 with AdamW: `python main.py --config=configs/resnet50_adamw.py:tiny`.

Not in the paper's ResNet comparison: run for the same 2512 steps as its first-order baselines,
lr 1e-3 (resnet50_adam.py's) with decoupled weight decay 0.05 on kernels (a placeholder to tune
at either size: decoupled decay is scaled by the learning rate, so Adam's 1e-4 would be none).
"""

from configs import _resnet50
from configs import base


def get_config(size: str = 'paper'):
  # our choice: not in the paper's comparison, so the step budget of its first-order baselines
  config = _resnet50.get_config(size, paper_steps=2512)
  config.optimizer = base.optimizer('adamw', learning_rate=1e-3, weight_decay=0.05)
  return config
