"""Damping at one learning rate: the config's x1/10 and x10, one seed (the report's second stage).

    python -m launch.sweep --config=configs/transformer_kfac.py:tiny --sweep=launch/sweeps/damping.py \
        --set optimizer.learning_rate=0.003 --sweep_dir=<the lr.py sweep's directory>

The second hyperparameter of the second-order optimizers: K-FAC's Tikhonov `damping` and
Shampoo's root damping `matrix_epsilon`; both trade the curvature's step against a first-order
one, and K-FAC's best damping moves with the learning rate (results/width_transfer). The config's
own damping at that rate is lr.py's trial, so run into an lr.py sweep's directory it is not
rerun. Fixed settings are lr.py's; the trials name both keys, so their settings stay distinct.
"""

from launch import space
from launch.sweeps import lr

CONFIG = 'configs/transformer_kfac.py:tiny'
FIELD = {'kfac': 'damping', 'shampoo': 'matrix_epsilon'}
FACTORS = (0.1, 10.0)


def key(optimizer: str) -> str:
  """The dotted config key of the optimizer's damping; ValueError for one without."""
  if optimizer not in FIELD:
    raise ValueError(f'the damping sweep is for {", ".join(FIELD)}, not {optimizer!r}')
  return f'optimizer.{FIELD[optimizer]}'


def get_sweep(config, factors=FACTORS, seeds=(0,)):
  field = key(config.optimizer.name)
  damping = config.optimizer[FIELD[config.optimizer.name]]
  return dict(space={'optimizer.learning_rate': space.grid(config.optimizer.learning_rate),
                     field: space.grid(*(float(f'{damping * f:.3g}') for f in factors))},
              seeds=list(seeds), fixed=lr.get_sweep(config)['fixed'])
