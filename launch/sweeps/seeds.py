"""Seeds of one setting: the base config's learning rate, seeds 0, 1 and 2 (the report's last stage).

    python -m launch.sweep --config=configs/transformer_adam.py:tiny --sweep=launch/sweeps/seeds.py \
        --set optimizer.learning_rate=0.003 --sweep_dir=<the lr.py sweep's directory>

Fixed settings and trial names are lr.py's, so run into an lr.py sweep's directory with one of its
rates the seed-0 trial is that sweep's own and is not rerun: only seeds 1 and 2 run.
"""

from launch import space
from launch.sweeps import lr

CONFIG = lr.CONFIG
SEEDS = (0, 1, 2)


def get_sweep(config):
  return dict(space={'optimizer.learning_rate': space.grid(config.optimizer.learning_rate)},
              seeds=list(SEEDS), fixed=lr.get_sweep(config)['fixed'])
