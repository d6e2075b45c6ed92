"""resnet50 with Adagrad: `python main.py --config=configs/resnet50_adagrad.py:tiny`.

Not in the paper's ResNet comparison: run for the same 2512 steps as its first-order
baselines, lr 0.1 with weight decay 1e-4 (untuned at either size).
"""

from configs import _resnet50
from configs import base


def get_config(size: str = 'paper'):
  # our choice: not in the paper's comparison, so the step budget of its first-order baselines
  config = _resnet50.get_config(size, paper_steps=2512)
  config.optimizer = base.optimizer('adagrad', learning_rate=0.1, weight_decay=1e-4)
  return config
