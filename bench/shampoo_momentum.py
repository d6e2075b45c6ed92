"""Shampoo's momentum conventions on the tiny lp_regression MLP: which learning rates reach the target.

    python bench/shampoo_momentum.py [--seeds=3] [--workdir=/tmp/shampoo_momentum]

The task, target and trainer are bench/soap_mlp.py's (MLP depth 3, width 64, tanh; eval loss
0.015; at most 400 steps). Shampoo is configs/lp_regression_shampoo.py:tiny with roots every 10
updates, under each momentum convention: the reference's sum, m = beta1 m + u (a step 1 / (1 -
beta1) = 10 times the direction's), and the moving average, m = beta1 m + (1 - beta1) u
(`moving_average_for_momentum`). Every learning rate of LEARNING_RATES runs at every seed; prints
one markdown table of steps to target (inf: missed).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # as main.py: single-threaded LAPACK
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import soap_mlp  # noqa: E402
from errors import ArgumentParser  # noqa: E402
from trainer import host_memory  # noqa: E402

LEARNING_RATES = (0.001, 0.003, 0.01, 0.03)
CONVENTIONS = {'sum (the reference)': False, 'moving average': True}


def main():
  parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--workdir', default='/tmp/shampoo_momentum')
  args = parser.parse_args()
  host_memory.keep_freed_memory()  # as main.py does
  print(f'- Command: `python bench/shampoo_momentum.py --seeds={args.seeds}`\n')
  print('| momentum | ' + ' | '.join(f'lr {lr:g}: steps per seed (median)' for lr in LEARNING_RATES) + ' |')
  print('|---|' + '---|' * len(LEARNING_RATES))
  for label, moving_average in CONVENTIONS.items():
    cells = []
    for lr in LEARNING_RATES:
      steps = [soap_mlp.train('shampoo', lr, seed, os.path.join(args.workdir, str(moving_average)),
                              preconditioning_compute_steps=10, moving_average_for_momentum=moving_average)[0]
               for seed in range(args.seeds)]
      cells.append(f'{", ".join(f"{s:g}" for s in steps)} ({float(np.median(steps)):g})')
    print(f'| {label} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
  main()
