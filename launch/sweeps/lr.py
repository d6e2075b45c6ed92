"""Peak learning rate: 5 log-spaced values from 1/10 to 10 times the config's, one seed.

    python -m launch.sweep --config=configs/transformer_shampoo.py:tiny --sweep=launch/sweeps/lr.py

Centred on the base config's learning rate, so the same file sweeps any optimizer.
Each trial stops at its target, so the sweep measures steps-to-target.
"""

from launch import space

CONFIG = 'configs/transformer_shampoo.py:tiny'


def get_sweep(config):
  learning_rate = config.optimizer.learning_rate
  return dict(
      space={'optimizer.learning_rate': space.log_grid(learning_rate / 10, learning_rate * 10, 5)},
      seeds=[0],
      fixed={'stop_at_target': True},
  )
