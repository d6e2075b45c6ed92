"""dlrm with AdamW: `python main.py --config=configs/dlrm_adamw.py:tiny`.

`paper`: AlgoPerf's Criteo 1TB target-setting point (Dahl et al. 2023;
mlcommons/algorithmic-efficiency, reference_algorithms/target_setting_algorithms/criteo1tb, set
with AdamW at batch 262144): learning rate 2.84e-3, b1 0.9209, b2 0.9982, weight decay 0.4526.
`tiny`: Adam's rate (dlrm_adam.py) with weight decay 1e-4, untuned.
"""

from configs import _dlrm
from configs import base


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  if size == 'tiny':
    config.optimizer = base.optimizer('adamw', learning_rate=1e-3, weight_decay=1e-4)
  else:
    # AlgoPerf's Criteo 1TB target-setting AdamW (Dahl et al. 2023; algorithmic-efficiency reference)
    config.optimizer = base.optimizer('adamw', learning_rate=0.002841, b1=0.920889, b2=0.99824,  # Dahl et al. 2023
                                      weight_decay=0.452618)  # Dahl et al. 2023 (AlgoPerf)
  return config
