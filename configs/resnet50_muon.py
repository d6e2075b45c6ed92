"""resnet50 with Muon: `python main.py --config=configs/resnet50_muon.py:tiny`.

Keller Jordan's Muon README: for a ConvNet, Muon takes every convolution kernel but the first,
each orthogonalized as a [kh * kw * in, out] matrix, at rate 0.02 with weight decay 0.01; the
stem convolution, the classifier head, and batch norm take Adam at resnet50_adam.py's rate,
learning_rate x adam_learning_rate_ratio. Run for the 2512 steps of the paper's first-order
baselines.
"""

from configs import _resnet50
from configs import base


def get_config(size: str = 'paper'):
  # our choice: not in the paper's comparison, so the step budget of its first-order baselines
  config = _resnet50.get_config(size, paper_steps=2512)
  config.optimizer = base.optimizer('muon', learning_rate=0.02, adam_learning_rate_ratio=1e-3 / 0.02,
                                    b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
  return config
