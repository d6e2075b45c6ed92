"""A config as committed, seed 0, stopping at its target: the first pass of launch/tiny_targets.py.

Trial names are seeds.py's, so its seeds 1 and 2 run later into the same directory.
"""

from launch.sweeps import seeds

CONFIG = seeds.CONFIG


def get_sweep(config):
  return dict(seeds.get_sweep(config), seeds=[0])
