"""Seeds of one (learning rate, damping) setting: the base config's, seeds 0, 1 and 2.

    python -m launch.sweep --config=configs/transformer_kfac.py:tiny --sweep=launch/sweeps/damping_seeds.py \
        --set optimizer.learning_rate=0.003 --set optimizer.damping=0.0001 --sweep_dir=<the lr.py sweep's directory>

seeds.py for a setting that damping.py found: its trials name both keys as damping.py's do, so
the seed-0 trial is that sweep's own and only seeds 1 and 2 run.
"""

from launch.sweeps import damping, seeds

CONFIG = damping.CONFIG


def get_sweep(config):
  return damping.get_sweep(config, factors=(1.0,), seeds=seeds.SEEDS)
