"""The reproduction report's sweeps: per tiny config, tune the learning rate (and damping), then 3 seeds.

    python -m launch.report [--configs=transformer_adam,bert_lamb] [--root=runs/report] [--parallel=2]
        [--set KEY=VALUE ...]

For each config `configs/<name>.py:tiny` (default: every task x optimizer config), into
`<root>/<name>`, each stage a launch.sweep into that one directory:
  1. launch/sweeps/lr.py: 5 rates from 1/10 to 10 times the config's, seed 0, each run stopping
     at its target;
  2. for K-FAC and Shampoo, launch/sweeps/damping.py at the best rate: their damping at 1/10
     and 10 times the config's;
  3. launch/sweeps/seeds.py (or damping_seeds.py) at the best setting so far, adding seeds 1, 2.
"Best" is by the seed-0 run: fewest steps to target, then the best final metric
(results.report.choose). Every run has its task's TASK_SETTINGS over the tiny config (shorter
runs where the tiny config's own would not fit the report's 3-hour budget on 2 CPU cores), then
`--set` (a test's short runs). Resumable: finished trials are kept, so a re-run only runs what is
missing. Each config's wall time is appended to `<root>/timing.jsonl` (results/report.py, which
writes REPORT.md from `<root>`, sums it).
"""

import glob
import json
import os
import sys
import time

from errors import ArgumentParser
from launch import backends, sweep
from launch.sweeps import damping
from results import compare, report as report_md, runs as runs_lib

# Per task, over its tiny config. Targets are what the untuned config reaches in about two thirds
# of the run, measured on 2 CPU cores (the README's report section has the numbers).
TASK_SETTINGS = {
    'transformer': {'num_steps': 400, 'eval_every': 25, 'schedule.warmup_steps': 100,
                    'target': ('loss', 1.5, 'below'), 'task.bleu_sentences': 0},
    'bert': {'num_steps': 1000, 'eval_every': 50, 'target': ('mlm_accuracy', 0.19, 'above')},
    'resnet50': {'num_steps': 300, 'target': ('accuracy', 0.75, 'above')},
    'dlrm': {'eval_every': 100},
}
LEARNING_RATE = report_md.LEARNING_RATE
# A `<task>_<optimizer>` config is one whose task has its shared `configs/_<task>.py` (which leaves out
# configs/optimizer_defaults.py).
TASKS = {os.path.basename(path)[1:-3] for path in glob.glob(os.path.join(backends.ROOT, 'configs', '_[a-z]*.py'))}
CONFIGS = tuple(sorted(name for path in glob.glob(os.path.join(backends.ROOT, 'configs', '[a-z]*_*.py'))
                       if (name := os.path.splitext(os.path.basename(path))[0]).rpartition('_')[0] in TASKS))


def best_setting(sweep_dir: str, swept: set[str] | None = None) -> dict:
  """The swept hyperparameters of the sweep's best setting by its seed-0 run (results.report.choose):
  the choice each stage makes, whatever seeds a later stage added. `swept`: only among the runs that
  swept exactly these keys (the learning-rate stage's, not the damping runs a first pass added)."""
  runs, _ = runs_lib.load([sweep_dir])
  if swept is not None:
    runs = [run for run in runs if set(run.overrides) - {'seed'} == swept]
  chosen = [setting for per in report_md.choose(compare.settings(runs)).values() for setting in per.values()]
  if len(chosen) != 1:
    raise sweep.SweepError(f'{sweep_dir}: expected the runs of one task and optimizer, found {len(chosen)}')
  return {key: value for key, value in chosen[0].runs[0].overrides.items() if key != 'seed'}


def run_config(name: str, root: str, parallel: int, settings: list[str]) -> int:
  """The stages for one config; the exit code of the first that failed, else 0."""
  task, optimizer = name.rsplit('_', 1)
  sweep_dir = os.path.join(root, name)
  common = [f'--config=configs/{name}.py:tiny', f'--sweep_dir={sweep_dir}', f'--parallel={parallel}',
            *(f'--set={key}={value!r}' for key, value in TASK_SETTINGS.get(task, {}).items()),
            *(f'--set={setting}' for setting in settings)]

  def stage(sweep_file: str, chosen: dict) -> int:
    return sweep.main([f'--sweep=launch/sweeps/{sweep_file}', *common,
                       *(f'--set={key}={value!r}' for key, value in chosen.items())])

  code = stage('lr.py', {})
  if code:
    return code
  chosen = best_setting(sweep_dir, {LEARNING_RATE})
  if optimizer in damping.FIELD:
    print(f'{name}: best learning rate {chosen[LEARNING_RATE]}; its damping', flush=True)
    code = stage('damping.py', chosen)
    if code:
      return code
    chosen = best_setting(sweep_dir)
  print(f'{name}: best setting {chosen}; its seeds', flush=True)
  return stage('damping_seeds.py' if len(chosen) > 1 else 'seeds.py', chosen)


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(prog='python -m launch.report', description=__doc__.splitlines()[0])
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
    with open(os.path.join(args.root, report_md.TIMING_FILE), 'a') as f:
      f.write(json.dumps({'config': name, 'seconds': round(seconds, 1), 'exit_code': code}) + '\n')
    if code:
      return code
    print(f'{name}: done in {seconds:.0f} s', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
