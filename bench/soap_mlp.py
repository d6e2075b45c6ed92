"""Steps to target and step time of Adam, Shampoo and SOAP on the tiny lp_regression MLP.

    python bench/soap_mlp.py [--seeds=3] [--workdir=/tmp/soap/bench]

The task is configs/lp_regression_<optimizer>.py:tiny made an MLP: depth 3, width 64, tanh
(kernels 32x64, 64x64, 64x1), l_4 loss on the generated correlated-feature set, batch 128,
constant learning rate, evaluated every 5 steps up to 400 steps. The target is eval loss 0.015:
the MLP's eval loss levels off between 0.006 and 0.012, noisily, so the tiny config's 0.006 is a
matter of luck (Adam at 0.01 met it at one seed of three). Each optimizer keeps its config's other fields and gets the
learning rate of a small sweep (VARIANTS, seed 0: fewest steps to target, then the lower
ms / step); the seeds after the first then run at that rate. Runs go through
`trainer.run`, as `main.py` trains, on one device, in workdirs under --workdir (removed
first). Per run: steps to target (the first eval below the target) and the median step
time over its log windows (train_seconds / steps between consecutive train log lines, so
evaluation and compilation are left out). Prints one markdown table: per optimizer the
chosen rate, the median steps to target over the seeds (with each seed's), the median
ms / step, and both over Adam's.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # as main.py: single-threaded LAPACK

import jax  # noqa: E402
import numpy as np  # noqa: E402

import trainer  # noqa: E402
from trainer import host_memory  # noqa: E402
from configs import lp_regression_adam, lp_regression_shampoo, lp_regression_soap  # noqa: E402
from errors import ArgumentParser  # noqa: E402

CONFIGS = {'adam': lp_regression_adam, 'shampoo': lp_regression_shampoo, 'soap': lp_regression_soap}
# Rows of the table: (config, its optimizer fields changed, learning rates swept).
FINE = (0.003, 0.007, 0.01, 0.014, 0.02, 0.03)
# Shampoo as bench/shampoo_overhead.py times it: roots every 10 updates, the default momentum.
ROOTS_EVERY_10 = {'preconditioning_compute_steps': 10, 'moving_average_for_momentum': True}
VARIANTS = {
    'adam': ('adam', {}, FINE),
    'shampoo': ('shampoo', {}, (0.003, 0.01, 0.03)),
    'shampoo, roots every 10 updates': ('shampoo', ROOTS_EVERY_10, FINE),
    'shampoo, warm_eigh roots every 10 updates': ('shampoo', {**ROOTS_EVERY_10, 'root_method': 'warm_eigh'}, FINE),
    'soap': ('soap', {}, FINE),
    'soap, bases every update': ('soap', {'precondition_frequency': 1}, FINE),
    # SOAP's b1 0.95 is the SOAP paper's language-model setting; Adam's 0.9 is what this MLP takes. Adam
    # gets SOAP's b2 in turn, so that neither is compared at the other's tuned betas alone.
    "soap, Adam's b1 0.9": ('soap', {'b1': 0.9}, FINE),
    "soap, Adam's b1 0.9, bases every update": ('soap', {'b1': 0.9, 'precondition_frequency': 1}, FINE),
    "adam, SOAP's b2 0.95": ('adam', {'b2': 0.95}, FINE),
}
MLP = dict(depth=3, width=64, activation='tanh')
NUM_STEPS, EVAL_EVERY, LOG_EVERY = 400, 5, 5
TARGET = ('loss', 0.015, 'below')


def config_for(name: str, learning_rate: float, seed: int, **optimizer):
  """The MLP run of `name`'s tiny config; `optimizer` overrides fields of its optimizer block."""
  config = CONFIGS[name].get_config('tiny')
  config.task.update(MLP)
  config.optimizer.update(optimizer)
  config.optimizer.learning_rate = learning_rate
  config.seed = seed
  config.num_steps, config.eval_every, config.log_every = NUM_STEPS, EVAL_EVERY, LOG_EVERY
  config.checkpoint_every = NUM_STEPS
  config.target, config.stop_at_target = TARGET, True
  config.lock()
  return config


def train(name: str, learning_rate: float, seed: int, workdir: str, **optimizer) -> tuple[float, float]:
  """(steps to target, inf if missed; median ms / step) of one run."""
  fields = ''.join(f'-{k}{v}' for k, v in sorted(optimizer.items()))
  path = os.path.join(workdir, f'{name}{fields}-lr{learning_rate:g}-seed{seed}')
  shutil.rmtree(path, ignore_errors=True)
  with contextlib.redirect_stdout(sys.stderr):  # the trainer's progress lines; the table alone on stdout
    summary = trainer.run(config_for(name, learning_rate, seed, **optimizer), path, f'lp_regression_{name}',
                          devices=jax.devices()[:1])
  with open(os.path.join(path, 'metrics.jsonl')) as f:
    train_lines = [line for line in map(json.loads, f) if line.get('split') == 'train']
  per_step = [(b['train_seconds'] - a['train_seconds']) / (b['step'] - a['step'])
              for a, b in zip(train_lines, train_lines[1:])]
  steps = summary['steps_to_target']
  return (float('inf') if steps is None else float(steps)), 1000 * float(np.median(per_step))


def main():
  parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--workdir', default='/tmp/soap/bench')
  args = parser.parse_args()
  host_memory.keep_freed_memory()  # as main.py does
  results = {}
  for name, (config, optimizer, rates) in VARIANTS.items():
    sweep = {lr: train(config, lr, 0, args.workdir, **optimizer) for lr in rates}
    best = min(sweep, key=lambda lr: sweep[lr])
    runs = [sweep[best]] + [train(config, best, seed, args.workdir, **optimizer) for seed in range(1, args.seeds)]
    results[name] = dict(lr=best, sweep={lr: steps for lr, (steps, _) in sweep.items()},
                         steps=[steps for steps, _ in runs], ms=float(np.median([ms for _, ms in runs])))
    print(f'{name}: {results[name]}', file=sys.stderr, flush=True)

  device = jax.devices()[0]
  print(f'- Date: {datetime.date.today()}. Machine: {platform.machine()}, {os.cpu_count()} CPUs, '
        f'{device.platform} ({device.device_kind}), jax {jax.__version__}.')
  print(f'- Command: `python bench/soap_mlp.py --seeds={args.seeds}`')
  print(f'- Task: tiny lp_regression as an MLP ({MLP}), target eval {TARGET[0]} {TARGET[2]} {TARGET[1]}, '
        f'eval every {EVAL_EVERY} steps, at most {NUM_STEPS}; learning rate swept over seed 0, then '
        f'{args.seeds} seeds.\n')
  print('| optimizer | learning rate (sweep: steps at each) | steps to target, median (per seed) | ms / step '
        '| steps x Adam | ms / step x Adam |')
  print('|---|---|---|---|---|---|')
  adam = results['adam']
  for name, r in results.items():
    steps = float(np.median(r['steps']))
    sweep = ', '.join(f'{lr:g}: {s:g}' for lr, s in r['sweep'].items())
    print(f'| {name} | {r["lr"]:g} ({sweep}) | {steps:g} ({", ".join(f"{s:g}" for s in r["steps"])}) '
          f'| {r["ms"]:.2f} | {steps / float(np.median(adam["steps"])):.2f} | {r["ms"] / adam["ms"]:.2f} |')


if __name__ == '__main__':
  main()
