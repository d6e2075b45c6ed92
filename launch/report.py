"""The reproduction report's sweeps: per tiny config, a learning-rate sweep, then its best rate with 3 seeds.

    python -m launch.report [--configs=transformer_adam,bert_lamb] [--root=runs/report] [--parallel=2]
        [--set KEY=VALUE ...]

For each config `configs/<name>.py:tiny` (default: every task x optimizer config), into
`<root>/<name>`: launch/sweeps/lr.py (5 rates from 1/10 to 10 times the config's, seed 0, each run
stopping at its target), then launch/sweeps/seeds.py at the rate that sweep found best (fewest steps
to target, then the best final metric: results.compare's rule), which adds seeds 1 and 2. Resumable:
finished trials are kept, so a re-run only runs what is missing. `--set` goes to both stages (a
test's short runs). Each config's wall time is appended to `<root>/timing.jsonl` (results/report.py,
which writes REPORT.md from `<root>`, sums it).
"""

import argparse
import glob
import json
import os
import sys
import time

from launch import backends, sweep
from results import compare, runs as runs_lib
from results.report import TIMING_FILE

CONFIGS = tuple(sorted(os.path.splitext(os.path.basename(path))[0]
                       for path in glob.glob(os.path.join(backends.ROOT, 'configs', '[a-z]*_*.py'))))


def best_learning_rate(sweep_dir: str) -> float:
  """The learning rate of the sweep's best seed-0 run (results.compare.best_per_optimizer): the choice
  the first stage made, whatever seeds the second added."""
  runs, _ = runs_lib.load([sweep_dir])
  runs = [run for run in runs if run.overrides.get('seed') == 0]
  best = [setting for per in compare.best_per_optimizer(compare.settings(runs)).values() for setting in per.values()]
  if len(best) != 1:
    raise sweep.SweepError(f'{sweep_dir}: expected the runs of one task and optimizer, found {len(best)} settings')
  return best[0].hyperparameters['optimizer.learning_rate']


def run_config(name: str, root: str, parallel: int, settings: list[str]) -> int:
  """Both stages for one config; the exit code of the first that failed, else 0."""
  sweep_dir = os.path.join(root, name)
  common = [f'--config=configs/{name}.py:tiny', f'--sweep_dir={sweep_dir}', f'--parallel={parallel}',
            *(f'--set={setting}' for setting in settings)]
  code = sweep.main(['--sweep=launch/sweeps/lr.py', *common])
  if code:
    return code
  learning_rate = best_learning_rate(sweep_dir)
  print(f'{name}: best learning rate {learning_rate}; its seeds', flush=True)
  return sweep.main(['--sweep=launch/sweeps/seeds.py', f'--set=optimizer.learning_rate={learning_rate!r}', *common])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m launch.report', description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(CONFIGS), help='comma-separated config names')
  parser.add_argument('--root', default='runs/report', help='a sweep directory per config under it')
  parser.add_argument('--parallel', type=int, default=2, help='trials at once (launch.sweep --parallel)')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', dest='settings',
                      help='a config setting for every trial of both stages (repeatable)')
  args = parser.parse_args(argv)
  names = [name for name in args.configs.split(',') if name]
  unknown = [name for name in names if name not in CONFIGS]
  if unknown:
    print(f'error: unknown config {unknown[0]!r}; choose from {", ".join(CONFIGS)}', file=sys.stderr)
    return 2
  os.makedirs(args.root, exist_ok=True)
  for name in names:
    start = time.monotonic()
    try:
      code = run_config(name, args.root, args.parallel, args.settings)
    except (sweep.SweepError, ValueError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    seconds = time.monotonic() - start
    with open(os.path.join(args.root, TIMING_FILE), 'a') as f:
      f.write(json.dumps({'config': name, 'seconds': round(seconds, 1), 'exit_code': code}) + '\n')
    if code:
      return code
    print(f'{name}: done in {seconds:.0f} s', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
