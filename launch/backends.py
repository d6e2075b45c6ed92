"""Where a sweep's trials run: this machine, a Cloud TPU VM pod slice, or a Slurm cluster.

Each backend takes the pending trials and starts `main.py` for each: `local` as
child processes here (several at once, each with its own devices), `tpu` through
`gcloud ... tpu-vm ssh --worker=all` so that every host of the slice starts its
process, `slurm` as an sbatch job array with one srun task per GPU. On the last
two, `main.py --multihost` joins the processes through `jax.distributed`, which
finds the coordinator itself on Cloud TPU and under Slurm; the sweep directory
must then be on a filesystem that every host mounts.

No value from the command line is pasted into shell text unquoted: commands run as
argv lists, and what a remote shell or the Slurm script reads is `shlex.quote`d.
"""

import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

from launch import trial_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ('local', 'tpu', 'slurm')
POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_LIBC = ctypes.CDLL(None)  # loaded before any fork: the child only calls it


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


def _trial_setup(launcher_pid: int, cores: set | None):
  """The trial's preexec_fn: it gets SIGTERM (checkpoints and stops) when the launcher dies, even by
  kill -9, and runs on `cores` when given. Runs after start_new_session's setsid, before exec."""

  def setup():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held by the launcher while it starts trials
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher_pid:  # the launcher died before prctl: no signal would come
      os.kill(os.getpid(), signal.SIGKILL)
    if cores:
      os.sched_setaffinity(0, cores)

  return setup


class _Processes:
  """Trials as child processes of the launcher, each in its own process group, one per slot at a time.

  SIGINT / SIGTERM are forwarded to every running trial's process group: the trials checkpoint
  and stop, the sweep stops too, and a re-run resumes them. A second signal kills the groups
  (SIGKILL) for a trial that does not stop. A trial gets SIGTERM when the launcher dies, kill -9
  included, so none outlives it. A trial whose command exits with a code its run does not explain
  is failed (trial_status.ended), its log kept in `<sweep_dir>/logs/<trial id>.log`.
  """

  def __init__(self, sweep_dir: str, dry_run: bool, slots: list[tuple[dict, set | None]]):
    self._logs = os.path.join(sweep_dir, 'logs')
    self._dry_run = dry_run
    self._slots = slots
    self._signal = None
    self._running = {}

  def command(self, trial) -> list[str]:
    raise NotImplementedError

  def _log(self, trial) -> str:
    return os.path.join(self._logs, f'{trial.id}.log')

  def _start(self, trial, slot):
    env, cores = slot
    os.makedirs(self._logs, exist_ok=True)
    trial_status.clear_failure(trial.workdir)
    command = self.command(trial)
    with open(self._log(trial), 'a') as log:
      log.write(f'# {shlex.join(command)}\n')
      log.flush()
      return subprocess.Popen(
          command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
          start_new_session=True,  # its own process group: a Ctrl-C reaches the sweep, which forwards it once
          preexec_fn=_trial_setup(os.getpid(), cores))

  def _handle(self, signum, frame):
    forward = signum if self._signal is None else signal.SIGKILL
    self._signal = self._signal or signum
    for process in self._running:
      if process.returncode is None:  # not reaped, so its pid is still its group's id
        try:
          os.killpg(process.pid, forward)
        except ProcessLookupError:
          pass

  def _ended(self, trial, code: int) -> str:
    status = trial_status.status(trial.workdir)
    if self._signal is not None and status not in trial_status.FINISHED:
      return 'interrupted'  # also when the signal came before the trial could checkpoint
    return trial_status.ended(trial.workdir, code, self._log(trial))

  def run(self, pending, index) -> int:
    if self._dry_run:
      for trial in pending:
        print(shlex.join(self.command(trial)))
      return 0
    queue, free, failed = list(pending), list(range(len(self._slots))), 0
    previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
    try:
      while (queue and self._signal is None) or self._running:
        while queue and free and self._signal is None:
          trial, slot = queue.pop(0), free.pop(0)
          # A stop signal during the start waits until the trial is in _running, so it is forwarded to it.
          held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
          try:
            self._running[self._start(trial, self._slots[slot])] = (trial, slot, time.monotonic())
          finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
          index.update(trial, 'running')
          print(f'started  {trial.id}', flush=True)
        time.sleep(POLL_SECONDS)
        for process in [p for p in self._running if p.poll() is not None]:
          trial, slot, started = self._running.pop(process)
          free.append(slot)
          result = self._ended(trial, process.returncode)
          failed += result == 'failed'
          index.update(trial, result)
          entry = index.entries[trial.id]
          print(f'finished {trial.id}: {result} at step {entry.get("step")}, steps_to_target='
                f'{entry.get("steps_to_target")}, {time.monotonic() - started:.0f} s'
                + (f' (exit {process.returncode}; log {self._log(trial)})' if result == 'failed' else ''),
                flush=True)
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
    if self._signal is not None:
      print(f'sweep stopped by {signal.Signals(self._signal).name}; run it again to resume', flush=True)
      return 128 + self._signal
    return 1 if failed else 0


class Local(_Processes):
  """Trials as child processes, `--parallel` at a time; GPUs (or else CPU cores) split among them."""

  def __init__(self, args, config_spec: str, sweep_dir: str):
    if args.parallel < 1:
      raise BackendError(f'--parallel={args.parallel} must be at least 1')
    super().__init__(sweep_dir, args.dry_run, self._device_slots(args.parallel))
    self._config_spec = config_spec

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


def _remote_path(path: str) -> str:
  """`path` quoted for the remote shell, a leading `~` or `~user` left unquoted for it to expand."""
  home, sep, rest = path.partition('/')
  if not re.fullmatch(r'~[\w.-]*', home):
    return shlex.quote(path)
  return home + sep + (shlex.quote(rest) if rest else '')


class Tpu(_Processes):
  """One `gcloud compute tpus tpu-vm ssh --worker=all` per trial, run one after another.

  Before the first trial, a setup step (skipped with --no_setup) brings every worker to this
  checkout: the files git tracks or would track go over as one archive (`tpu-vm scp --worker=all`),
  are unpacked into --remote_dir, and `make install ACCEL=tpu` builds its .venv there. Both are
  idempotent: unpacking keeps the files' times, so an unchanged lock installs nothing.
  The remote command is shell text: the checkout, the interpreter and every argument are quoted.
  Stopping the launcher stops gcloud; the processes on the workers are not signalled through ssh.
  """

  def __init__(self, args, config_spec: str, sweep_dir: str):
    if not args.tpu or not args.zone:
      raise BackendError('--backend=tpu needs --tpu=<TPU VM name> and --zone=<zone>')
    _require('gcloud', args.dry_run)
    super().__init__(sweep_dir, args.dry_run, [({}, None)])
    self._args, self._config_spec = args, config_spec
    self._archive = os.path.join(sweep_dir, 'code.tar.gz')

  def _gcloud(self, verb: str, *args: str, extra: tuple = ()) -> list[str]:
    project = [f'--project={self._args.project}'] if self._args.project else []
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, *args, f'--zone={self._args.zone}', *project,
            '--worker=all', *extra]

  def _ssh(self, remote: str) -> list[str]:
    return self._gcloud('ssh', self._args.tpu, extra=(f'--command={remote}',))

  def command(self, trial) -> list[str]:
    return self._ssh(f'cd {_remote_path(self._args.remote_dir)} && '
                     + shlex.join([self._args.python, 'main.py', '--multihost', *trial.main_args(self._config_spec)]))

  def setup_commands(self) -> list[list[str]]:
    """Copy the archive to every worker, unpack it into the checkout and install the TPU set there."""
    remote_dir, archive = _remote_path(self._args.remote_dir), '~/shampoo-bench-code.tar.gz'
    return [self._gcloud('scp', self._archive, f'{self._args.tpu}:{archive}'),
            self._ssh(f'mkdir -p {remote_dir} && tar -xzf {archive} -C {remote_dir} && cd {remote_dir} && '
                      + shlex.join(['make', 'install', 'ACCEL=tpu', f'PYTHON={self._args.venv_python}']))]

  def _pack(self) -> None:
    listed = subprocess.run(['git', '-C', ROOT, 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
                            capture_output=True, text=True)
    if listed.returncode != 0:
      raise BackendError(f'the TPU setup copies the git checkout, and {ROOT} is not one: {listed.stderr.strip()}')
    os.makedirs(os.path.dirname(self._archive), exist_ok=True)
    files = [name for name in listed.stdout.split('\0') if name and os.path.exists(os.path.join(ROOT, name))]
    with tarfile.open(self._archive + '.tmp', 'w:gz') as archive:
      for name in files:
        archive.add(os.path.join(ROOT, name), arcname=name, recursive=False)
    os.replace(self._archive + '.tmp', self._archive)

  def run(self, pending, index) -> int:
    if pending and not self._args.no_setup:
      if self._dry_run:
        for command in self.setup_commands():
          print(shlex.join(command))
      else:
        self._pack()
        log = os.path.join(self._logs, 'setup.log')
        os.makedirs(self._logs, exist_ok=True)
        with open(log, 'w') as f:
          for command in self.setup_commands():
            f.write(f'# {shlex.join(command)}\n')
            f.flush()
            code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT).returncode
            if code != 0:
              print(f'setup on the workers failed (exit {code}); log {log}; no trial started', flush=True)
              return 1
        print(f'setup: the checkout and its .venv are in {self._args.remote_dir} on every worker', flush=True)
    return super().run(pending, index)


class Slurm:
  """An sbatch job array: one array task per pending trial, one srun process per GPU.

  The job's options go to sbatch as arguments, not as #SBATCH lines of the script; in the script
  every path, argument and the interpreter are quoted. An array task whose srun exits with a code
  its run does not explain records the trial as failed (trial_status.ended); its log is Slurm's.
  """

  def __init__(self, args, config_spec: str, sweep_dir: str):
    for name in ('nodes', 'gpus_per_node'):
      if getattr(args, name) < 1:
        raise BackendError(f'--{name}={getattr(args, name)} must be at least 1')
    _require('sbatch', args.dry_run)
    if not args.dry_run and shutil.which(os.path.join(ROOT, args.python)) is None and shutil.which(args.python) is None:
      raise BackendError(f'--python={args.python} is not an interpreter in {ROOT}: run `make install ACCEL=cuda` there')
    self._args, self._config_spec, self._sweep_dir = args, config_spec, sweep_dir
    self._dry_run = args.dry_run
    self._logs = os.path.join(sweep_dir, 'logs')
    self.path = os.path.join(sweep_dir, 'sweep.sbatch')

  def submit_command(self, pending) -> list[str]:
    a = self._args
    log = os.path.join(self._logs.replace('%', '%%'), 'slurm-%A_%a.log')  # sbatch expands % in file names
    options = [f'--job-name=sweep-{os.path.basename(self._sweep_dir)}', f'--nodes={a.nodes}',
               f'--ntasks-per-node={a.gpus_per_node}', '--gpus-per-task=1', f'--time={a.time}',
               f'--array=0-{len(pending) - 1}', f'--output={log}']
    options += [f'--partition={a.partition}'] * bool(a.partition) + [f'--account={a.account}'] * bool(a.account)
    return ['sbatch', *options, self.path]

  def script(self, pending) -> str:
    python = shlex.quote(self._args.python)
    cases = [f'  {i}) WORKDIR={shlex.quote(trial.workdir)}; TRIAL=({shlex.join(trial.main_args(self._config_spec))}) ;;'
             for i, trial in enumerate(pending)]
    return '\n'.join([
        '#!/bin/bash',
        "# The sweep's pending trials, one per array task, submitted with the job's options as sbatch",
        '# arguments. srun starts one process per GPU; main.py --multihost joins them into one JAX job',
        '# (jax.distributed detects Slurm). A failed srun is recorded in the workdir (launch/trial_status.py).',
        'set -euo pipefail', f'cd {shlex.quote(ROOT)}', 'case "$SLURM_ARRAY_TASK_ID" in', *cases, 'esac',
        f'LOG={shlex.quote(self._logs)}/"slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.log"',
        f'rm -f "$WORKDIR"/{shlex.quote(trial_status.FAILED_FILE)}',
        'code=0',
        f'srun {python} main.py --multihost "${{TRIAL[@]}}" || code=$?',
        f'{python} -m launch.trial_status "$WORKDIR" "$code" "$LOG"',
        'exit "$code"', ''])

  def run(self, pending, index) -> int:
    if not pending:
      return 0
    script, command = self.script(pending), self.submit_command(pending)
    if self._dry_run:
      print(shlex.join(command))
      print(script, end='')
      return 0
    os.makedirs(self._logs, exist_ok=True)
    with open(self.path, 'w') as f:
      f.write(script)
    code = subprocess.run(command).returncode
    for trial in pending:
      index.update(trial, 'submitted' if code == 0 else 'pending')
    return code
