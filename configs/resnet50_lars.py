"""resnet50 with LARS (optax.lars' direction): `python main.py --config=configs/resnet50_lars.py:tiny`.

`paper`: the paper's LARS baseline runs 2512 steps (PAPERS.md); its learning rate is not
stated there and could not be retrieved here, so 29.0 is a placeholder to tune (of the order
of MLPerf LARS submissions' peak rates at this batch size, not verified here). Trust
coefficient 0.001, momentum 0.9, weight decay 1e-4; batch norm and biases get neither decay
nor trust ratio (MLPerf). `tiny`: lr 5.0 (top-1 0.95 at step 200; lr 1.0 reached 0.744 in a
200-step run).
"""

from configs import _resnet50
from configs import base

PAPER_STEPS = 2512


def get_config(size: str = 'paper'):
  config = _resnet50.get_config(size, PAPER_STEPS)
  config.optimizer = base.optimizer('lars', learning_rate=5.0 if size == 'tiny' else 29.0, momentum=0.9,
                                    trust_coefficient=0.001, weight_decay=1e-4)
  return config
