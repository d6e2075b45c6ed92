"""Trains one task with one optimizer: `python main.py --config=configs/X.py:tiny`.

Parses and checks the command line, then hands (config, workdir) to the
trainer, or with --dry_run to the planner (trainer/plan.py: the config compiled
for config.hardware, exit 3 when it does not fit). Exit codes:
  0    the run completed or reached its target;
  1    a crash (an error with its traceback), or a multi-process job it cannot join;
  2    bad input, or a workdir the run cannot use (not writable, a full disk before training):
       one `error:` line, nothing trained;
  3    the run stopped short, with one `error:` line and its last good checkpoint kept: it
       diverged (a non-finite loss, eval metric or state, named by step and leaf), or the disk
       refused a checkpoint or metrics write;
  128 + the signal number: stopped by SIGTERM/SIGINT, after a checkpoint it will resume from
       (before training, from where it started).
"""

import logging as std_logging
import os
import signal
import sys
import warnings

# Before anything imports TensorFlow (it only runs the input pipelines): its C++ start-up
# chatter off. TensorFlow >= 2.19 logs the oneDNN notice whatever TF_CPP_MIN_LOG_LEVEL says, and
# oneDNN speeds up TF matmuls and convolutions, which the pipelines do not run.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# Before NumPy or jaxlib load OpenBLAS: its LAPACK (jaxlib's eigh, QR, Cholesky and LU on CPU)
# single-threaded. The roots and eigenbases take one small matrix per call, and OpenBLAS's threads,
# spinning beside XLA's own pool on the same cores, made such a call up to 30x slower on a 2-core
# CPU with another process running (a 512x512 QR 288 ms instead of 10; docs/measurements.md).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app, flags, logging
from ml_collections import config_flags

from errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, with its size: configs/<task>_<optimizer>.py[:tiny|:paper].',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory (default: runs/<config name>-<size>). An existing run there resumes.')

_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Plan instead of train: compile the train and eval steps for config.hardware without '
    'data or accelerators, print the plan and write <workdir>/plan.json; exit 3 when it does not fit.')

_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Join a multi-process job (jax.distributed.initialize): one process per host, '
    'or per GPU under Slurm; the coordinator is auto-detected on Cloud TPU and Slurm.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, where auto-detection does not apply '
    '(with --num_processes and --process_id; implies --multihost).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job (with --coordinator_address).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 (with --coordinator_address).')

EXIT_USAGE, EXIT_FAILURE = 2, 1  # a failure: a crash, or a multi-process job it cannot join
EXIT_STOPPED = 3  # training stopped short: it diverged, or the disk refused a write
EXIT_DOES_NOT_FIT = 3  # --dry_run: the config does not fit its hardware


def _fail(message: str, code: int = EXIT_USAGE):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def _one_line(error: Exception) -> str:
  """The last non-empty line of an error, without a leading 'SomeError: '."""
  text = [line.strip() for line in str(error).splitlines() if line.strip()]
  line = text[-1] if text else type(error).__name__
  head, sep, rest = line.partition(': ')
  return rest if sep and head.endswith('Error') else line


def _diverged(summary: dict, workdir: str) -> str:
  """What went non-finite at which step, and the last checkpoint (a finite state) kept."""
  found = [f'non-finite {summary["non_finite_metric"]}'] if summary.get('non_finite_metric') else []
  if summary.get('non_finite_leaf'):
    found.append(f'first non-finite leaf {summary["non_finite_leaf"]}')
  last = summary['last_checkpoint_step']
  kept = f'last good checkpoint: step {last}' if last is not None else 'no checkpoint saved'
  return f'training diverged at step {summary["diverged_at_step"]} ({"; ".join(found)}); {kept} in {workdir}'


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser exits 1 with a usage dump; bad input here is one line and exit 2."""
  try:
    remaining = flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:  # an override of a field the locked config lacks
    key = str(e.args[0]).strip('"\'') if e.args else ''
    overrides = [arg[2:].split('=')[0] for arg in argv if arg.startswith('--config.')]
    culprit = next((o for o in overrides if key in o.split('.')), key)
    _fail(f'unknown config key --{culprit}: the config has no such field')
  except (flags.Error, ConfigError, ValueError, TypeError) as e:
    _fail(_one_line(e))
  if flags.FLAGS['config'].present:
    path = flags.FLAGS['config'].serialize().split('=', 1)[1].split(':')[0]
    if not os.path.isfile(path):
      _fail(f'config file {path} does not exist')
    try:
      _CONFIG.value.size
    except Exception as e:  # noqa: BLE001 -- whatever the config file raised, reported in one line
      _fail(f'{flags.FLAGS["config"].serialize().split("=", 1)[1]}: {_one_line(e)}')
  return remaining


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if _CONFIG.value is None:
    _fail('--config is required, e.g. --config=configs/lp_regression_adam.py:tiny')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # library INFO chatter off; -v 0 brings it back
  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS['config'])))[0]
  workdir = _WORKDIR.value if _WORKDIR.value is not None else os.path.join('runs', f'{name}-{config.size}')

  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    _fail('--coordinator_address, --num_processes and --process_id go together')
  if _NUM_PROCESSES.value is not None and not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
    _fail(f'--process_id={_PROCESS_ID.value} must be in 0..{_NUM_PROCESSES.value - 1}')

  if _DRY_RUN.value and (_MULTIHOST.value or _COORDINATOR.value is not None):
    _fail('--dry_run plans on one machine for the whole target: drop --multihost and --coordinator_address')
  from trainer import hardware  # no JAX: the platform is chosen before JAX starts
  try:
    hardware.set_platform_environment(hardware.get(config.hardware) if _DRY_RUN.value else None)
  except ConfigError as e:
    _fail(str(e))

  import trainer  # jax, orbax, clu: only once the command line is known to be sound
  trainer.host_memory.keep_freed_memory()
  if _DRY_RUN.value:
    try:
      plan = trainer.plan.run(config, workdir, name)
    except (ConfigError, trainer.workdir.WriteError) as e:  # plan.json refused: as an unwritable workdir
      _fail(str(e))
    if not plan['fits']:
      _fail(plan['verdict'], EXIT_DOES_NOT_FIT)
    return
  if _MULTIHOST.value or _COORDINATOR.value is not None:
    try:
      trainer.distributed.initialize(*explicit)
    except (RuntimeError, ValueError) as e:
      _fail(f'cannot join the multi-process job: {_one_line(e)}', EXIT_FAILURE)
  try:
    summary = trainer.run(config, workdir, name)
  except ConfigError as e:
    _fail(str(e))
  except trainer.workdir.WriteError as e:
    # The failed save's unfinished tasks report themselves again when collected at exit.
    std_logging.disable()
    sys.unraisablehook = lambda unraisable: None
    warnings.filterwarnings('ignore', 'coroutine .* was never awaited', RuntimeWarning)
    _fail(str(e), EXIT_STOPPED)
  status = summary['status']
  print(f'{name}-{config.size}: {status} at step {summary["step"]}; '
        f'steps_to_target={summary["steps_to_target"]} '
        f'train_seconds_to_target={summary["train_seconds_to_target"]}; workdir {workdir}')
  if status == 'diverged':
    _fail(_diverged(summary, workdir), EXIT_STOPPED)
  if status == 'interrupted':
    sys.exit(128 + signal.Signals[summary['signal']].value)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
