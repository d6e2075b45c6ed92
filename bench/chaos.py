"""Faults thrown at real `main.py` runs, each outcome checked against docs/reliability.md.

    python bench/chaos.py [--kills=100] [--seed=0] [--root=runs/chaos] [--quick]

One straight run of the tiny lp_regression config with Adam (a checkpoint every 20 steps) is the
reference. Every other run trains the same config in its own workdir and must end bitwise equal to
it (every array of the final checkpoint) with the same metrics (every line's values but its
timers), however it was interrupted:

  kill -9       `--kills` times, spread over runs of 10: at a random moment after the run's first
                step, or the moment a checkpoint write is seen in progress (`<step>.orbax-checkpoint-tmp`
                in `checkpoints/`); each time the same command is run again, until one completes;
  torn line     after a kill, half a metrics line is appended (what a kill inside a write leaves);
                the rerun must say it dropped it;
  emptied step  after a kill, every file of the newest checkpoint is truncated to 0 bytes; the rerun
                must move it aside to `<step>.corrupt` and resume from the step before;
  SIGTERM while compiling   sent when JAX logs `Compiling jit(train_step)` (JAX_LOG_COMPILES=1):
                exit 143, `summary.json` interrupted at step 0, no traceback; the rerun completes;
  two runs      a second run on a workdir in use (the first stopped with SIGSTOP after its first
                steps, so it holds the workdir however slow the second is to start): exit 2 with
                one `error: ... is in use by pid` line; the first, continued, completes;
  full disk     a run whose files may not grow past 4 KB (RLIMIT_FSIZE: EFBIG, as a full disk's
                ENOSPC): exit 3 with one `error: cannot write ...` line naming the file and the last
                good checkpoint; the rerun without the limit completes.

Prints a table (scenario, trials, as expected) and exits 1 if any outcome was not the expected one.
`--quick` (2 kills, one of each kind, and one trial of every other fault, runs of 100 steps; the
SIGTERM and full-disk workdirs are not rerun, as tests/test_faults_stops.py reruns both in-process)
is run by `make test` (tests/test_chaos.py); docs/reliability.md has the last full result.
"""

import dataclasses
import datetime
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from errors import ArgumentParser  # noqa: E402

CONFIG = 'lp_regression_adam'
CHECKPOINT_EVERY = 20
KILLS_PER_RUN = 10
FILE_SIZE_LIMIT = 4096
TIMERS = ('seconds',)  # metric names holding this are wall-clock timers, which differ run to run
POLL_SECONDS = 0.002


@dataclasses.dataclass
class Outcome:
  scenario: str
  expected: bool
  detail: str
  trials: int = 1  # the faults it covers (kill -9: every kill, over all runs)
  exact: int | None = None  # of those, the ones that ended as expected (kill -9: in runs ending bitwise equal)

  def as_expected(self) -> int:
    return self.exact if self.exact is not None else self.trials * self.expected


class Run:
  """`main.py` on one workdir, as a user reruns it: same command each time, output kept per attempt."""

  def __init__(self, root: str, name: str, num_steps: int, workdir: str | None = None):
    self.workdir = workdir or os.path.join(root, name)
    self.logs = os.path.join(root, 'logs', name)
    self.num_steps = num_steps
    self.attempts = 0
    self.done = threading.Event()  # the reference's: set when it has ended, which comparisons wait for
    os.makedirs(self.logs, exist_ok=True)

  def start(self, file_size_limit: int | None = None, log_compiles: bool = False) -> subprocess.Popen:
    self.attempts += 1
    env = {key: value for key, value in os.environ.items() if key != 'XLA_FLAGS'}  # one CPU device
    env['JAX_PLATFORMS'] = 'cpu'
    if log_compiles:
      env['JAX_LOG_COMPILES'] = '1'
    argv = ['main.py', f'--config=configs/{CONFIG}.py:tiny', f'--workdir={self.workdir}',
            f'--config.num_steps={self.num_steps}', f'--config.checkpoint_every={CHECKPOINT_EVERY}',
            '--config.log_every=5', f'--config.eval_every={self.num_steps // 2}']
    if file_size_limit:  # set in the child itself: a fork of this (JAX-importing) process could deadlock
      argv = ['-c', f'import resource, runpy, sys\n'
                    f'resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, {file_size_limit}))\n'
                    f'sys.argv = {argv!r}\nrunpy.run_path("main.py", run_name="__main__")']
    with open(self.log(), 'w') as log:
      return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

  def log(self) -> str:
    """The latest attempt's output."""
    return os.path.join(self.logs, f'{self.attempts}.log')

  def output(self) -> str:
    with open(self.log()) as f:
      return f.read()

  def finish(self, **start) -> tuple[int, str]:
    """Runs (again) to the end: exit code and output."""
    code = self.start(**start).wait()
    return code, self.output()

  def metrics_lines(self) -> int:
    try:
      with open(os.path.join(self.workdir, 'metrics.jsonl'), 'rb') as f:
        return f.read().count(b'\n')
    except FileNotFoundError:
      return 0

  def checkpoint_entries(self) -> list[str]:
    try:
      return os.listdir(os.path.join(self.workdir, 'checkpoints'))
    except FileNotFoundError:
      return []

  def steps(self) -> list[int]:
    return sorted(int(name) for name in self.checkpoint_entries() if name.isdigit())

  def summary(self) -> dict:
    with open(os.path.join(self.workdir, 'summary.json')) as f:
      return json.load(f)


def wait_for(condition, process: subprocess.Popen) -> bool:
  """Polls `condition` until it holds (True) or the process has exited (False)."""
  while not condition():
    if process.poll() is not None:
      return False
    time.sleep(POLL_SECONDS)
  return True


def kill_9(run: Run, rng: random.Random, in_checkpoint_write: bool, after_steps: int = 0) -> str | None:
  """Starts the run and kill -9s it after its first step: at a random moment, or the moment a
  checkpoint write is in progress (once `after_steps` checkpoints have landed). What it hit, or None
  if the run completed first."""
  lines = run.metrics_lines()
  left_before = set(partial_writes(run))  # by earlier kills, until the step is written again
  process = run.start()
  if not wait_for(lambda: run.metrics_lines() > lines, process):
    return None
  if in_checkpoint_write:
    hit = wait_for(lambda: bool(set(partial_writes(run)) - left_before) and len(run.steps()) >= after_steps,
                   process)
  else:
    deadline = time.monotonic() + rng.uniform(0.0, 0.5)
    hit = wait_for(lambda: time.monotonic() > deadline, process)
  process.kill()
  process.wait()
  if not hit and process.returncode == 0:
    return None
  return 'checkpoint write' if set(partial_writes(run)) - left_before else 'training'


def partial_writes(run: Run) -> list[str]:
  """Checkpoint steps being written (orbax renames `<step>.orbax-checkpoint-tmp...` when done)."""
  return [name for name in run.checkpoint_entries() if '.orbax-checkpoint-tmp' in name]


def leaves(workdir: str) -> tuple[int, list[np.ndarray]]:
  """The final checkpoint's step and raw arrays (params, optimizer state, step, RNG)."""
  os.environ['JAX_PLATFORMS'] = 'cpu'
  import orbax.checkpoint as ocp  # noqa: PLC0415  (slow import, after the runs have started)
  root = os.path.join(workdir, 'checkpoints')
  step = max(int(name) for name in os.listdir(root) if name.isdigit())
  restored = ocp.StandardCheckpointer().restore(os.path.join(root, str(step), 'state'))
  return step, [np.asarray(x) for x in restored.values()]


def metric_values(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{key: value for key, value in json.loads(line).items() if not any(t in key for t in TIMERS)}
            for line in f]


def differs(run: Run, reference: Run) -> str | None:
  """Why the run's final state or metrics are not the reference's, or None: bitwise equal."""
  reference.done.wait()
  if not os.path.exists(os.path.join(reference.workdir, 'summary.json')):
    return 'the reference run failed'
  summary = run.summary()
  if summary['status'] != 'completed':
    return f'status {summary["status"]}'
  step, arrays = leaves(run.workdir)
  reference_step, reference_arrays = leaves(reference.workdir)
  if step != reference_step:
    return f'final checkpoint step {step}, the reference {reference_step}'
  if len(arrays) != len(reference_arrays) or not all(
      a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(arrays, reference_arrays)):
    return 'final checkpoint arrays differ'
  if metric_values(run.workdir) != metric_values(reference.workdir):
    return 'metrics differ'
  return None


def clean(output: str) -> bool:
  return 'Traceback' not in output


def kill_runs(root: str, reference: Run, kills: int, rng: random.Random, quick: bool) -> list[Outcome]:
  """`kills` kill -9s over runs of KILLS_PER_RUN; the first run also gets a torn line and an
  emptied newest step. Each run is then rerun to completion and compared with the reference."""
  outcomes, runs = [], []
  done = 0
  index = 0
  while done < kills:
    run = Run(root, f'kill9-{index}', reference.num_steps)
    hits = []
    count = min(KILLS_PER_RUN, kills - done)
    for number in range(count):
      in_write = number % 2 == 1 if quick else rng.random() < 0.5
      last_of_first_run = index == 0 and number == count - 1
      # The first run's last kill leaves two landed checkpoints, the newest of which plant_faults empties.
      hit = kill_9(run, rng, in_write or last_of_first_run, after_steps=2 if last_of_first_run else 0)
      if hit is None:
        break
      hits.append(hit)
    done += len(hits)
    faults = []
    if index == 0 and hits:
      faults = plant_faults(run)
    code, output = run.finish()
    reason = differs(run, reference) if code == 0 else f'exit {code}'
    for name, expected_line in faults:
      if expected_line not in output:
        reason = reason or f'{name}: no line "{expected_line}"'
    if not clean(output):
      reason = reason or 'a traceback'
    runs.append((hits, run.attempts, reason))
    for name, _ in faults:
      outcomes.append(Outcome(name, reason is None, reason or 'dropped / moved aside, then bitwise equal'))
    if not hits:
      break
    index += 1
  hits = [hit for run_hits, _, _ in runs for hit in run_hits]
  failures = [f'run {i}: {reason}' for i, (_, _, reason) in enumerate(runs) if reason]
  detail = (f'{len(runs)} runs, {sum(starts for _, starts, _ in runs)} starts; '
            f'{hits.count("checkpoint write")} kills left a checkpoint write unfinished, '
            f'{hits.count("training")} hit training; ' + ('; '.join(failures) or 'every run bitwise equal to the reference'))
  exact = sum(len(run_hits) for run_hits, _, reason in runs if reason is None)
  return [Outcome('kill -9', not failures, detail, trials=len(hits), exact=exact), *outcomes]


def plant_faults(run: Run) -> list[tuple[str, str]]:
  """A torn metrics line and an emptied newest checkpoint (when one landed before it): the lines
  the rerun must print."""
  with open(os.path.join(run.workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 9999, "spl')
  faults = [('torn metrics line', 'dropped a torn last line')]
  steps = run.steps()
  if len(steps) >= 2:
    for folder, _, files in os.walk(os.path.join(run.workdir, 'checkpoints', str(steps[-1]))):
      for name in files:
        os.truncate(os.path.join(folder, name), 0)
    faults.append(('emptied newest checkpoint',
                   f'moved aside to {run.workdir}/checkpoints/{steps[-1]}.corrupt, resuming from step {steps[-2]}'))
  return faults


def sigterm_while_compiling(root: str, reference: Run, rerun: bool) -> Outcome:
  run = Run(root, 'sigterm-compile', reference.num_steps)
  process = run.start(log_compiles=True)
  if not wait_for(lambda: 'Compiling jit(train_step)' in run.output(), process):
    return Outcome('SIGTERM while compiling', False, f'exited {process.returncode} before compiling')
  process.send_signal(signal.SIGTERM)
  code = process.wait()
  output = run.output()
  summary = run.summary() if os.path.exists(os.path.join(run.workdir, 'summary.json')) else {}
  if code != 128 + signal.SIGTERM or summary.get('status') != 'interrupted' or summary.get('step') != 0:
    return Outcome('SIGTERM while compiling', False, f'exit {code}, summary {summary.get("status")}')
  if not clean(output):
    return Outcome('SIGTERM while compiling', False, 'a traceback')
  if not rerun:
    return Outcome('SIGTERM while compiling', True, 'exit 143, interrupted at step 0')
  code, _ = run.finish()
  reason = differs(run, reference) if code == 0 else f'rerun exit {code}'
  return Outcome('SIGTERM while compiling', reason is None,
                 reason or 'exit 143, interrupted at step 0; the rerun bitwise equal')


def two_runs(root: str, reference: Run) -> Outcome:
  first = Run(root, 'two-runs', reference.num_steps)
  process = first.start()
  if not wait_for(lambda: first.metrics_lines() > 0, process):
    return Outcome('two runs, one workdir', False, f'the first exited {process.returncode} before training')
  process.send_signal(signal.SIGSTOP)  # holds the workdir however long the second takes to start
  second = Run(root, 'two-runs-second', reference.num_steps, workdir=first.workdir)
  code, output = second.finish()
  process.send_signal(signal.SIGCONT)
  lines = [line for line in output.splitlines() if line.strip()]
  first_code = process.wait()
  if code != 2 or len(lines) != 1 or 'is in use by pid' not in lines[0]:
    return Outcome('two runs, one workdir', False, f'second: exit {code}, {len(lines)} lines')
  reason = differs(first, reference) if first_code == 0 else f'first exit {first_code}'
  return Outcome('two runs, one workdir', reason is None,
                 reason or f'second: exit 2, "{lines[0][:60]}..."; the first bitwise equal')


def full_disk(root: str, reference: Run, rerun: bool) -> Outcome:
  run = Run(root, 'full-disk', reference.num_steps)
  code, output = run.finish(file_size_limit=FILE_SIZE_LIMIT)
  errors = [line for line in output.splitlines() if line.startswith('error:')]
  if code != 3 or len(errors) != 1 or 'cannot write' not in errors[0] or not clean(output):
    return Outcome('full disk', False, f'exit {code}, {len(errors)} error lines, traceback: {not clean(output)}')
  if not rerun:
    return Outcome('full disk', True, f'exit 3, "{errors[0][:90]}..."')
  code, _ = run.finish()
  reason = differs(run, reference) if code == 0 else f'rerun exit {code}'
  return Outcome('full disk', reason is None, reason or f'exit 3, "{errors[0][:90]}..."; the rerun bitwise equal')


def table(outcomes: list[Outcome], command: str, seconds: float) -> str:
  by_scenario: dict[str, list[Outcome]] = {}
  for outcome in outcomes:
    by_scenario.setdefault(outcome.scenario, []).append(outcome)
  rows = [f'{datetime.date.today()}, {platform.node()} ({os.cpu_count()} CPUs), `{command}`, '
          f'{seconds:.0f} s', '', '| scenario | trials | as expected | detail |', '|---|---|---|---|']
  for scenario, group in by_scenario.items():
    details = '; '.join(outcome.detail for outcome in group if not outcome.expected) or group[0].detail
    rows.append(f'| {scenario} | {sum(o.trials for o in group)} | {sum(o.as_expected() for o in group)} | {details} |')
  return '\n'.join(rows)


def main(argv: list[str]) -> int:
  parser = ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kills', type=int, default=100, help='kill -9s in all (runs of 10)')
  parser.add_argument('--seed', type=int, default=0, help='seeds the kill moments')
  parser.add_argument('--root', default=os.path.join(ROOT, 'runs', 'chaos'), help='workdirs and logs; emptied first')
  parser.add_argument('--quick', action='store_true', help='2 kills and shorter runs: the version make test runs')
  args = parser.parse_args(argv)
  if args.kills < 1:
    parser.error('--kills must be at least 1')
  kills = 2 if args.quick else args.kills
  num_steps = 100 if args.quick else 400
  shutil.rmtree(args.root, ignore_errors=True)
  os.makedirs(args.root)
  started = time.monotonic()
  rng = random.Random(args.seed)
  reference = Run(args.root, 'reference', num_steps)
  outcomes: list[Outcome] = []

  def run_reference():
    code, _ = reference.finish()
    if code:
      outcomes.append(Outcome('reference', False, f'exit {code}; its log: {reference.log()}'))
    reference.done.set()

  # Each scenario in its own workdirs, all at once; comparisons wait for the reference.
  threads = [threading.Thread(target=run_reference),
             threading.Thread(target=lambda: outcomes.extend(
                 [sigterm_while_compiling(args.root, reference, rerun=not args.quick),
                  full_disk(args.root, reference, rerun=not args.quick)])),
             threading.Thread(target=lambda: outcomes.append(two_runs(args.root, reference)))]
  for thread in threads:
    thread.start()
  outcomes.extend(kill_runs(args.root, reference, kills, rng, args.quick))
  for thread in threads:
    thread.join()
  command = 'python bench/chaos.py ' + ' '.join(argv)
  print(table(outcomes, command.strip(), time.monotonic() - started))
  return 0 if all(outcome.expected for outcome in outcomes) else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
