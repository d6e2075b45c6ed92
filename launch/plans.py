"""Plans every paper config for its hardware (`main.py --dry_run`), then writes docs/scale.md.

    python -m launch.plans [--configs=bert_shampoo,dlrm_adam] [--root=runs/plans] [--parallel=2]
        [--out=docs/scale.md] [--set KEY=VALUE ...] [--timeout=1800]

Each config's plan goes to `<root>/<name>/plan.json` (with the planner's output in plan.log and
its wall time in plan_seconds.txt); results/scale.py renders them into `--out` below its marker
line, keeping the page's prose above it. A plan already in `<root>` is
kept, so a re-run only plans what is missing. Exit 0 when every plan was made (fitting or not:
the table says), 1 when a planner failed.
"""

import concurrent.futures
import glob
import os
import subprocess
import sys
import time

from errors import ArgumentParser
from launch import backends
from results import scale

TASKS = ('transformer', 'bert', 'dlrm', 'resnet50')  # the paper's benchmarks
CONFIGS = tuple(sorted(os.path.splitext(os.path.basename(path))[0]
                       for task in TASKS for path in glob.glob(os.path.join(backends.ROOT, 'configs', f'{task}_*.py'))))


def plan_config(name: str, root: str, settings: list[str], timeout: float) -> tuple[str, int]:
  """Runs the planner for configs/<name>.py:paper into <root>/<name>, stopped after `timeout` seconds;
  (name, exit code)."""
  workdir = os.path.join(root, name)
  plan = scale.read_plan(workdir)
  if plan is not None:
    return name, 0 if plan['fits'] else 3
  os.makedirs(workdir, exist_ok=True)
  command = [sys.executable, os.path.join(backends.ROOT, 'main.py'), f'--config=configs/{name}.py:paper',
             '--dry_run', f'--workdir={workdir}', *(f'--config.{setting}' for setting in settings)]
  start = time.monotonic()
  with open(os.path.join(workdir, 'plan.log'), 'w') as log:
    try:
      code = subprocess.run(command, cwd=backends.ROOT, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
      log.write(f'planner timed out after {timeout:g} s\n')
      code = 124
  with open(os.path.join(workdir, 'plan_seconds.txt'), 'w') as f:
    f.write(f'{time.monotonic() - start:.1f}\n')
  return name, code


def main(argv: list[str]) -> int:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(CONFIGS), help='comma-separated config names')
  parser.add_argument('--root', default='runs/plans')
  parser.add_argument('--parallel', type=int, default=2, help='planners at once')
  parser.add_argument('--out', default='docs/scale.md')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='a config override for every plan (e.g. hardware=tpu_v4_256)')
  parser.add_argument('--timeout', type=float, default=1800, help='seconds a planner may take before it is stopped')
  args = parser.parse_args(argv)
  names = [name for name in args.configs.split(',') if name]
  unknown = sorted(set(names) - set(CONFIGS))
  if unknown:
    parser.error(f'unknown configs {", ".join(unknown)}: choose among {", ".join(CONFIGS)}')
  if args.parallel < 1:
    parser.error(f'--parallel={args.parallel} must be >= 1')
  if args.timeout <= 0:
    parser.error(f'--timeout={args.timeout:g} must be > 0')
  failed = []
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    for name, code in pool.map(lambda n: plan_config(n, args.root, args.set, args.timeout), names):
      status = {0: 'fits', 3: 'does not fit'}.get(code, f'planner failed (exit {code})')
      print(f'{name}: {status}', flush=True)
      if code not in (0, 3):
        failed.append(name)
  try:
    with open(args.out) as f:
      page = f.read()
  except FileNotFoundError:
    page = ''
  tables = scale.markdown(args.root, names, ' '.join(['python -m launch.plans', *argv]))
  with open(args.out + '.tmp', 'w') as f:
    f.write(scale.with_tables(page, tables))
  os.replace(args.out + '.tmp', args.out)
  print(f'wrote {args.out}')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
