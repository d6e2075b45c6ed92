"""resnet50 with SGD and Nesterov momentum: `python main.py --config=configs/resnet50_sgd.py:tiny`.

`paper`: the paper's first-order baseline runs 2512 steps (PAPERS.md); its learning rate is
not stated there, so 12.8 is Goyal et al.'s linear scaling rule (0.1 per 256 examples at
batch 32768), a placeholder. Momentum 0.9, weight decay 1e-4 (MLPerf). `tiny`: lr 0.2.
"""

from configs import _resnet50
from configs import base

PAPER_STEPS = 2512


def get_config(size: str = 'paper'):
  config = _resnet50.get_config(size, PAPER_STEPS)
  config.optimizer = base.optimizer('sgd', learning_rate=0.2 if size == 'tiny' else 12.8, momentum=0.9,
                                    nesterov=True, weight_decay=1e-4)
  return config
