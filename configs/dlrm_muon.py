"""dlrm with Muon: `python main.py --config=configs/dlrm_muon.py:tiny`.

Keller Jordan's Muon README: rate 0.02 for the hidden matrices (the MLPs' kernels); the embedding
tables, the top MLP's output layer (the click logit), biases and norm scales take Adam at Adam's
rate (dlrm_adam.py), learning_rate x adam_learning_rate_ratio. No weight decay, as dlrm_adam.py.
`tiny`: Muon's rate 0.005 (at 0.02 the AUC stayed under the 0.78 target in 3000 steps; 0.005
reached it at step 1500).
"""

from configs import _dlrm
from configs import base
from configs import optimizer_defaults


def get_config(size: str = 'paper'):
  config = _dlrm.get_config(size)
  output_layer = f'top_{len(config.task.top_mlp)}/'
  muon_learning_rate = 0.005 if size == 'tiny' else 0.02  # Keller Jordan's Muon README: 0.02
  config.optimizer = base.optimizer(
      'muon', learning_rate=muon_learning_rate, adam_learning_rate_ratio=1e-3 / muon_learning_rate,
      b1=0.9, b2=0.999, eps=1e-8,
      adam_paths=(*optimizer_defaults.BY_NAME['muon']['adam_paths'], output_layer))
  return config
