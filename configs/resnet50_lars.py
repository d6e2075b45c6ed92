"""resnet50 with LARS (optax.lars' direction): `python main.py --config=configs/resnet50_lars.py:tiny`.

`paper`: the paper's LARS baseline runs 2512 steps (Shampoo reference README), which states
no other value for it; those are MLPerf's ResNet-50 reference (mlcommons/training,
image_classification/tensorflow2: its LARS schedule and optimizer) at batch 32768: peak rate
31.2 after 25 warm-up epochs, quadratic decay, trust coefficient 0.001, momentum 0.9, weight
decay 1e-4; batch norm and biases get neither decay nor trust ratio. `tiny`: lr 5.0 (top-1
0.95 at step 200; lr 1.0 reached 0.744 in a 200-step run).
"""

from configs import _resnet50
from configs import base

PAPER_STEPS = 2512  # Shampoo reference README: LARS reaches 75.9% in 2512 steps
# MLPerf ResNet-50 reference (its LARS schedule): 25 warm-up epochs at batch >= 32768, train // batch steps each
WARMUP_STEPS = 25 * (_resnet50.IMAGENET_TRAIN_EXAMPLES // _resnet50.PAPER_BATCH)


def get_config(size: str = 'paper'):
  config = _resnet50.get_config(size, PAPER_STEPS, paper_warmup_steps=WARMUP_STEPS)
  config.optimizer = base.optimizer(
      'lars',
      learning_rate=5.0 if size == 'tiny' else 31.2,  # MLPerf reference (LARS schedule): 31.2 at batch >= 32768
      momentum=0.9,             # MLPerf reference: momentum 0.9
      trust_coefficient=0.001,  # MLPerf reference (LARS optimizer): eeta 0.001
      weight_decay=1e-4)        # MLPerf reference (LARS optimizer): weight_decay 0.0001
  return config
