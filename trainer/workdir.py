"""The run directory: locked by its run, checked before anything is written, JSON files written atomically.

A write the disk refuses (full, over quota, read-only, not ours) is one `WriteError` line naming the
file and what it held, never a traceback: before training the run turns it into a `ConfigError`
(a workdir it cannot use), during training it stops the run with the checkpoints written so far.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

import ml_collections
from absl import logging

from errors import ConfigError

CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
# The run using the workdir holds an flock on this file for its life and writes {"pid": .., "host": ..}
# into it (empty once released); launch/trial_status.py reads the same file to tell a running trial.
LOCK_FILE = '.lock'
LOCK_TRIES, LOCK_RETRY_SECONDS = 5, 0.05
# What a disk that refuses a write raises: full (or a quota, or a file-size limit), read-only, not ours.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})
# Settings that do not change the training trajectory: a resumed run may change them.
RUN_CONTROL_KEYS = ('num_steps', 'eval_every', 'log_every', 'checkpoint_every', 'keep_checkpoints',
                    'stop_at_target', 'target', 'eval_batch_size', 'data_dir', 'diagnostics')


class WriteError(Exception):
  """A file of the run that the disk would not take; the message names it and what it held."""


def is_disk_error(error: BaseException) -> bool:
  return isinstance(error, OSError) and error.errno in DISK_ERRNOS


@contextlib.contextmanager
def writing(what: str, path: str):
  """Turns the disk's refusal to take `what` (at `path`) into one WriteError line."""
  try:
    yield
  except OSError as e:
    if not is_disk_error(e):
      raise
    raise WriteError(f'cannot write {what} to {path}: {e.strerror}') from None


def write_json(path: str, value) -> None:
  """Writes via a temporary file and a rename, so a reader never sees half a file."""
  with writing(os.path.basename(path), path):
    with open(path + '.tmp', 'w') as f:
      json.dump(value, f, indent=2, default=str)
      f.write('\n')
    os.replace(path + '.tmp', path)


def flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return flat


def _create(workdir: str) -> None:
  """Makes the workdir if missing; each way it cannot serve a run is one ConfigError line."""
  if not workdir:
    raise ConfigError('--workdir is empty')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} exists and is not a directory')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'cannot create workdir {workdir}: {e.strerror}') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f'workdir {workdir} is not writable')


def _holder(fd: int) -> dict:
  """The pid and host the lock file names ({} when released, or while its holder writes it)."""
  try:
    holder = json.loads(os.pread(fd, 4096, 0) or b'{}')
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) and isinstance(holder.get('pid'), int) else {}


def _known_dead(holder: dict) -> bool:
  """Whether the holder is a process of this host that no longer runs (another host's cannot be asked)."""
  if not holder or holder.get('host') != socket.gethostname() or holder['pid'] <= 0:
    return False
  try:
    os.kill(holder['pid'], 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # another user's live process
    return False
  return False


class WorkdirLock:
  """An exclusive lock on a workdir for a run's whole life, so that a second run there fails at once.

  The OS drops an flock when its process dies, even on SIGKILL, so a crashed run's lock is free
  and the next run takes it over. The fd is not inherited by child processes (Python's default),
  which therefore cannot keep the lock past the run.
  """

  def __init__(self, workdir: str):
    _create(workdir)
    self.workdir = workdir
    path = os.path.join(workdir, LOCK_FILE)
    try:
      self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        self._acquire()
      except BaseException:
        os.close(self._fd)  # the lock file stays as its holder wrote it
        self._fd = None
        raise
    except OSError as e:  # always before training: a workdir the run cannot use
      if not is_disk_error(e):
        raise
      raise ConfigError(f'cannot write the lock {path}: {e.strerror}') from None

  def _acquire(self) -> None:
    for attempt in range(LOCK_TRIES):
      try:
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        # Retried briefly while the holder is unnamed (just locking) or known dead (a launcher's
        # probe holds the lock for an instant).
        holder = _holder(self._fd)
        if attempt == LOCK_TRIES - 1 or (holder and not _known_dead(holder)):
          who = f'pid {holder["pid"]} on host {holder.get("host")}' if holder else 'another process'
          raise ConfigError(f'workdir {self.workdir} is in use by {who}') from None
        time.sleep(LOCK_RETRY_SECONDS)
      except OSError as e:  # a filesystem without flock: run, unprotected
        logging.warning('workdir %s: cannot lock %s (%s); nothing stops a second run there',
                        self.workdir, LOCK_FILE, e.strerror)
        return
    previous = _holder(self._fd)
    if previous and _known_dead(previous):
      logging.warning('workdir %s: taking over the lock of pid %d, which is no longer running',
                      self.workdir, previous['pid'])
    elif previous:
      logging.warning('workdir %s: taking over the lock of pid %d on host %s, which no longer holds it',
                      self.workdir, previous['pid'], previous.get('host'))
    record = json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode()
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, record, 0)

  def release(self) -> None:
    """Empties the lock file (nothing to take over) and drops the lock; a second call does nothing."""
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
    except OSError as e:  # a disk turned read-only: the pid stays, and the next run takes the lock over
      if not is_disk_error(e):
        raise
    finally:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


@contextlib.contextmanager
def locked(workdir: str, enabled: bool = True):
  """The workdir locked while the block runs; `enabled` only on process 0 of a multi-process job,
  whose other processes share the workdir by design."""
  if not enabled:
    yield None
    return
  with WorkdirLock(workdir) as lock:
    yield lock


def prepare(workdir: str, config: ml_collections.ConfigDict, write: bool = True) -> None:
  """Creates the workdir, or checks that the run it holds has the same config.

  Every process of a multi-process job checks; only the one that `write`s records the config.
  """
  _create(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    old_flat, new_flat = flatten(old), flatten(new)
    changed = sorted(k for k in old_flat.keys() | new_flat.keys()
                     if old_flat.get(k) != new_flat.get(k) and k.split('.')[0] not in RUN_CONTROL_KEYS)
    if changed:
      raise ConfigError(f'workdir {workdir} holds a run with a different config '
                        f'({", ".join(changed)} differ); use another --workdir')
  if write:
    write_json(path, new)
