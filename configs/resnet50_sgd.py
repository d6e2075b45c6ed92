"""resnet50 with SGD and Nesterov momentum: `python main.py --config=configs/resnet50_sgd.py:tiny`.

`paper`: the paper's first-order baseline, SGD-Nesterov for 2512 steps (Shampoo reference
README). The README states no learning rate or warm-up for it, so they are Goyal et al. 2017's:
the linear scaling rule (0.1 per 256 examples: 12.8 at batch 32768) and a gradual warm-up over
5 epochs (196 steps). Momentum 0.9, weight decay 1e-4 (Goyal et al. 2017). `tiny`: lr 0.2.
"""

from configs import _resnet50
from configs import base

PAPER_STEPS = 2512  # Shampoo reference README: SGD-Nesterov reaches 75.9% in 2512 steps
# Goyal et al. 2017, Sec. 2.2: gradual warm-up over the first 5 epochs
WARMUP_STEPS = -(-5 * _resnet50.IMAGENET_TRAIN_EXAMPLES // _resnet50.PAPER_BATCH)


def get_config(size: str = 'paper'):
  config = _resnet50.get_config(size, PAPER_STEPS, paper_warmup_steps=WARMUP_STEPS)
  config.optimizer = base.optimizer(
      'sgd',
      learning_rate=0.2 if size == 'tiny' else 12.8,  # Goyal et al. 2017, Sec. 2.1: 0.1 x 32768 / 256
      momentum=0.9,       # Goyal et al. 2017, Sec. 5.1
      nesterov=True,      # Shampoo reference README: the SGD-Nesterov baseline
      weight_decay=1e-4)  # Goyal et al. 2017, Sec. 5.1
  return config
