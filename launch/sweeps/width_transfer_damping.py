"""Width transfer of the damping (muP): the width_transfer sweep with the damping swept instead of the rate.

    python -m launch.sweep --config=configs/lp_regression_kfac.py:tiny --sweep=launch/sweeps/width_transfer_damping.py \
        --set optimizer.learning_rate=0.00625 --sweep_dir=runs/sweeps/width_transfer_damping-lp_regression_kfac
    python -m results.width_transfer runs/sweeps/width_transfer* --out=results/width_transfer

Ishikawa & Karakida's Table 1 scales the damping with width as well as the learning rate:
K-FAC's `damping` per block (optimizers/parameterization.py, DAMPING_EXPONENTS), and
Shampoo's `matrix_epsilon`, relative to each statistic's largest eigenvalue under `mup`.
Same widths, steps and task settings as launch/sweeps/width_transfer.py, the damping at the
config's value x 10^-2 .. 10^2 and the learning rate fixed: give it the best rate at the
base width from the learning-rate sweep (`--set optimizer.learning_rate=...`).
"""

from launch import space
from launch.sweeps import damping as damping_sweep
from launch.sweeps import width_transfer

CONFIG = 'configs/lp_regression_kfac.py:tiny'
DAMPING_FACTORS = tuple(10.0 ** k for k in range(-2, 3))


def get_sweep(config):
  field = damping_sweep.key(config.optimizer.name)
  sweep = width_transfer.get_sweep(config)
  damping = config.optimizer[field.split('.')[1]]
  sweep['space'][field] = space.grid(*(float(f'{damping * f:.3g}') for f in DAMPING_FACTORS))
  del sweep['space']['optimizer.learning_rate']
  return sweep
