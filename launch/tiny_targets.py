"""Does every `:tiny` config reach its own target within its own step budget, as committed?

    python -m launch.tiny_targets [--configs=transformer_adagrad,bert_adagrad] [--root=runs/tiny_targets]
        [--seeds=3] [--parallel=2]

Each config runs unchanged (its learning rate, schedule, budget and target) with `stop_at_target`,
a launch.sweep per config into `<root>/<name>`: first seed 0 of every config (launch/sweeps/committed.py),
then seeds 1 and 2 (launch/sweeps/seeds.py) when `--seeds=3`. Resumable: finished trials are kept;
kept runs of a former setting of a config are refused (exit 2), never counted as its seeds.
Prints, and writes to `<root>/tiny_targets.md`, each config's steps to target per seed; exits 1
when a seed missed its target.
"""

import datetime
import glob
import json
import math
import os
import sys

from errors import ArgumentParser
from launch import report, sweep
from results import runs as runs_lib, scale

TABLE_FILE = 'tiny_targets.md'
IGNORED = {'seed', 'stop_at_target', 'data_dir'}  # what the tool sets per run, and where data lives


def former_setting(name: str, root: str) -> str | None:
  """The top-level config fields in which a run kept under `<root>/<name>` differs from the config as
  committed now (it would be counted as one of its seeds), or None."""
  config, _, _ = sweep.load_config(f'configs/{name}.py:tiny')
  committed = json.loads(config.to_json_best_effort())
  for path in sorted(glob.glob(os.path.join(root, name, '*', 'config.json'))):
    with open(path) as f:
      kept = json.load(f)
    differ = sorted(key for key in committed.keys() - IGNORED if kept.get(key) != committed[key])
    if differ:
      return f'{os.path.dirname(path)} ({", ".join(differ)})'
  return None


def run_seeds(names: list[str], root: str, sweep_file: str, parallel: int) -> int:
  for name in names:
    code = sweep.main([f'--sweep=launch/sweeps/{sweep_file}', f'--config=configs/{name}.py:tiny',
                       f'--sweep_dir={os.path.join(root, name)}', f'--parallel={parallel}'])
    if code:
      return code
  return 0


def table(names: list[str], root: str, command: str) -> tuple[str, int]:
  """(the markdown table under a line naming when, where and how it was made, how many finished
  seeds missed their target)."""
  rows = [f'Measured {datetime.date.today().isoformat()} on {scale.machine()} by `{command}`; '
          'steps to target are at the eval period of each config.', '',
          '| config | steps | target | steps to target, seeds 0, 1, 2 | reached | final eval metric |',
          '|---|---|---|---|---|---|']
  missed = 0
  for name in names:
    runs, _ = runs_lib.load([os.path.join(root, name)])
    runs.sort(key=lambda run: run.overrides.get('seed', 0))
    if not runs:
      rows.append(f'| {name} | | | not run | | |')
      continue
    target = runs[0].target
    steps = [run.steps_to_target for run in runs]
    missed += sum(math.isinf(s) for s in steps)
    finals = ', '.join(f'{run.final(target.metric):.4g}' for run in runs)
    rows.append(f'| {name} | {runs[0].config["num_steps"]} | {target} | '
                f'{", ".join("—" if math.isinf(s) else str(int(s)) for s in steps)} | '
                f'{sum(not math.isinf(s) for s in steps)}/{len(steps)} | {finals} |')
  return '\n'.join(rows) + '\n', missed


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(prog='python -m launch.tiny_targets', description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(report.CONFIGS), help='comma-separated config names')
  parser.add_argument('--root', default='runs/tiny_targets', help='a sweep directory per config under it')
  parser.add_argument('--seeds', type=int, choices=(1, 3), default=3, help='seed 0 only, or seeds 0, 1, 2')
  parser.add_argument('--parallel', type=int, default=2, help='trials at once (launch.sweep --parallel)')
  args = parser.parse_args(argv)
  names = [name for name in args.configs.split(',') if name]
  unknown = [name for name in names if name not in report.CONFIGS]
  if unknown:
    print(f'error: unknown config {unknown[0]!r}; choose from {", ".join(report.CONFIGS)}', file=sys.stderr)
    return 2
  try:
    for name in names:
      if (former := former_setting(name, args.root)) is not None:
        print(f'error: {former} ran a former setting of {name}; remove {os.path.join(args.root, name)} '
              'to measure the committed one', file=sys.stderr)
        return 2
    code = run_seeds(names, args.root, 'committed.py', args.parallel)
    if not code and args.seeds == 3:
      code = run_seeds(names, args.root, 'seeds.py', args.parallel)
  except (sweep.SweepError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if code:
    return code
  markdown, missed = table(names, args.root, ' '.join(['python -m launch.tiny_targets', *(argv or sys.argv[1:])]))
  with open(os.path.join(args.root, TABLE_FILE), 'w') as f:
    f.write(markdown)
  print(markdown, end='')
  return 1 if missed else 0


if __name__ == '__main__':
  sys.exit(main())
