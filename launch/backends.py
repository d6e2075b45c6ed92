"""Where a sweep's trials run: this machine, a Cloud TPU VM pod slice, or a Slurm cluster.

Each backend takes the pending trials and starts `main.py` for each: `local` as
child processes here (several at once, each with its own devices), `tpu` through
`gcloud ... tpu-vm ssh --worker=all` so that every host of the slice starts its
process, `slurm` as an sbatch job array with one srun task per GPU. On the last
two, `main.py --multihost` joins the processes through `jax.distributed`, which
finds the coordinator itself on Cloud TPU and under Slurm; the sweep directory
must then be on a filesystem that every host mounts.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from launch import trial_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ('local', 'tpu', 'slurm')
POLL_SECONDS = 0.5


class BackendError(ValueError):
  """Backend settings that cannot work; reported as one line, exit code 2."""


def create(args, config_spec: str, sweep_dir: str):
  cls = {'local': Local, 'tpu': Tpu, 'slurm': Slurm}[args.backend]
  return cls(args, config_spec, sweep_dir)


def _require(program: str, dry_run: bool) -> None:
  if not dry_run and shutil.which(program) is None:
    raise BackendError(f'{program} is not on PATH; use --dry_run to print what would run')


def _visible_gpus() -> list[str]:
  if os.environ.get('CUDA_VISIBLE_DEVICES'):
    return os.environ['CUDA_VISIBLE_DEVICES'].split(',')
  if shutil.which('nvidia-smi') is None:
    return []
  listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True).stdout
  return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith('GPU ')]


def _split(items: list, parts: int) -> list[list]:
  size = len(items) // parts
  return [items[i * size:(i + 1) * size] for i in range(parts)]


class Local:
  """Trials as child processes, `--parallel` at a time; GPUs (or else CPU cores) split among them.

  SIGINT / SIGTERM are forwarded to the running trials, which checkpoint and stop;
  the sweep then stops too, and a re-run resumes them.
  """

  def __init__(self, args, config_spec: str, sweep_dir: str):
    if args.parallel < 1:
      raise BackendError(f'--parallel={args.parallel} must be at least 1')
    self._config_spec = config_spec
    self._logs = os.path.join(sweep_dir, 'logs')
    self._dry_run = args.dry_run
    self._slots = self._device_slots(args.parallel)
    self._signal = None

  @staticmethod
  def _device_slots(parallel: int) -> list[tuple[dict, set | None]]:
    """Per slot: environment additions and the CPU cores its trials may use."""
    if parallel == 1:
      return [({}, None)]
    gpus = _visible_gpus()
    if gpus:
      if len(gpus) < parallel:
        raise BackendError(f'--parallel={parallel} needs at least {parallel} GPUs; {len(gpus)} visible')
      return [({'CUDA_VISIBLE_DEVICES': ','.join(group)}, None) for group in _split(gpus, parallel)]
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < parallel:
      raise BackendError(f'--parallel={parallel} needs at least {parallel} CPU cores; {len(cores)} available')
    return [({}, set(group)) for group in _split(cores, parallel)]

  def command(self, trial) -> list[str]:
    return [sys.executable, os.path.join(ROOT, 'main.py'), *trial.main_args(self._config_spec)]

  def _start(self, trial, slot):
    env, cores = slot
    os.makedirs(self._logs, exist_ok=True)
    with open(os.path.join(self._logs, f'{trial.id}.log'), 'a') as log:
      return subprocess.Popen(
          self.command(trial), cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
          start_new_session=True,  # a Ctrl-C reaches the sweep, which forwards it once
          preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)

  def _handle(self, signum, frame):
    self._signal = signum
    for process in self._running:
      if process.poll() is None:
        process.send_signal(signum)

  def run(self, pending, index) -> int:
    if self._dry_run:
      for trial in pending:
        print(shlex.join(self.command(trial)))
      return 0
    queue, free, failed = list(pending), list(range(len(self._slots))), 0
    self._running = {}
    previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
      while (queue and self._signal is None) or self._running:
        while queue and free and self._signal is None:
          trial, slot = queue.pop(0), free.pop(0)
          self._running[self._start(trial, self._slots[slot])] = (trial, slot, time.monotonic())
          index.update(trial, 'running')
          print(f'started  {trial.id}', flush=True)
        time.sleep(POLL_SECONDS)
        for process in [p for p in self._running if p.poll() is not None]:
          trial, slot, started = self._running.pop(process)
          free.append(slot)
          result = trial_status.status(trial.workdir)
          if result not in trial_status.FINISHED and self._signal is not None:
            result = 'interrupted'  # also when the signal came before the trial could checkpoint
          elif result not in trial_status.FINISHED + ('interrupted',):
            result, failed = 'failed', failed + 1
          index.update(trial, result)
          entry = index.entries[trial.id]
          print(f'finished {trial.id}: {result} at step {entry.get("step")}, steps_to_target='
                f'{entry.get("steps_to_target")}, {time.monotonic() - started:.0f} s'
                + (f' (exit {process.returncode}; log {self._logs}/{trial.id}.log)' if result == 'failed' else ''),
                flush=True)
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
    if self._signal is not None:
      print(f'sweep stopped by {signal.Signals(self._signal).name}; run it again to resume', flush=True)
      return 128 + self._signal
    return 1 if failed else 0


class Tpu:
  """One `gcloud compute tpus tpu-vm ssh --worker=all` per trial, run one after another."""

  def __init__(self, args, config_spec: str, sweep_dir: str):
    if not args.tpu or not args.zone:
      raise BackendError('--backend=tpu needs --tpu=<TPU VM name> and --zone=<zone>')
    _require('gcloud', args.dry_run)
    self._args, self._config_spec, self._dry_run = args, config_spec, args.dry_run

  def command(self, trial) -> list[str]:
    remote = ' '.join([f'cd {self._args.remote_dir} &&', self._args.python, 'main.py', '--multihost',
                       *map(shlex.quote, trial.main_args(self._config_spec))])
    project = [f'--project={self._args.project}'] if self._args.project else []
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', self._args.tpu, f'--zone={self._args.zone}',
            *project, '--worker=all', f'--command={remote}']

  def run(self, pending, index) -> int:
    failed = 0
    for trial in pending:
      if self._dry_run:
        print(shlex.join(self.command(trial)))
        continue
      print(f'started  {trial.id}', flush=True)
      code = subprocess.run(self.command(trial)).returncode
      result = trial_status.status(trial.workdir)  # 'pending' when the sweep dir is not mounted here
      failed += code not in (0, 1)  # 1: diverged, a result
      index.update(trial, result if result != 'pending' else f'exit {code}')
      print(f'finished {trial.id}: exit {code}, {result}', flush=True)
    return 1 if failed else 0


class Slurm:
  """An sbatch job array: one array task per pending trial, one srun process per GPU."""

  def __init__(self, args, config_spec: str, sweep_dir: str):
    for name in ('nodes', 'gpus_per_node'):
      if getattr(args, name) < 1:
        raise BackendError(f'--{name}={getattr(args, name)} must be at least 1')
    _require('sbatch', args.dry_run)
    self._args, self._config_spec, self._sweep_dir = args, config_spec, sweep_dir
    self._dry_run = args.dry_run

  def script(self, pending) -> str:
    a = self._args
    options = [f'--job-name=sweep-{os.path.basename(self._sweep_dir)}', f'--nodes={a.nodes}',
               f'--ntasks-per-node={a.gpus_per_node}', '--gpus-per-task=1', f'--time={a.time}',
               f'--array=0-{len(pending) - 1}', f'--output={self._sweep_dir}/logs/slurm-%A_%a.log']
    options += [f'--partition={a.partition}'] * bool(a.partition) + [f'--account={a.account}'] * bool(a.account)
    cases = [f'  {i}) TRIAL=({shlex.join(trial.main_args(self._config_spec))}) ;;'
             for i, trial in enumerate(pending)]
    return '\n'.join([
        '#!/bin/bash', *(f'#SBATCH {option}' for option in options),
        f'# Pending trials of {self._sweep_dir}, one per array task. srun starts one process per GPU;',
        '# main.py --multihost joins them into one JAX job (jax.distributed detects Slurm).',
        'set -euo pipefail', f'cd {shlex.quote(ROOT)}', 'case "$SLURM_ARRAY_TASK_ID" in', *cases, 'esac',
        f'srun {a.python} main.py --multihost "${{TRIAL[@]}}"', ''])

  def run(self, pending, index) -> int:
    if not pending:
      return 0
    script = self.script(pending)
    if self._dry_run:
      print(script, end='')
      return 0
    os.makedirs(os.path.join(self._sweep_dir, 'logs'), exist_ok=True)
    path = os.path.join(self._sweep_dir, 'sweep.sbatch')
    with open(path, 'w') as f:
      f.write(script)
    code = subprocess.run(['sbatch', path]).returncode
    for trial in pending:
      index.update(trial, 'submitted' if code == 0 else 'pending')
    return code
