"""A trial's run status, as its `main.py` run left it in the trial's workdir.

Both the sweep (to index trials and skip finished ones) and the backends (to tell
how a trial they ran ended) read it; it depends on neither.
"""

import fcntl
import json
import os

SUMMARY_FILE = 'summary.json'  # what main.py writes when a run ends
# trainer/workdir.py's lock: the run using the workdir holds an flock on it for its life and writes
# {"pid": .., "host": ..} into it (empty once released).
LOCK_FILE = '.lock'
FINISHED = ('completed', 'reached_target', 'diverged')


def summary(workdir: str) -> dict:
  """The run's summary.json ({} until the run ends)."""
  try:
    with open(os.path.join(workdir, SUMMARY_FILE)) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}


def status(workdir: str) -> str:
  """The run's status from its summary.json, else 'pending'."""
  return summary(workdir).get('status') or 'pending'


def lock_holder(workdir: str) -> tuple[int | None, str | None] | None:
  """(pid, host) of the run holding the workdir's lock (None each while it writes them), else None.

  Probes with a shared flock, dropped at once: it never takes the lock from a run, and a run that
  starts during the probe retries.
  """
  try:
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    try:
      holder = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
      holder = {}
    holder = holder if isinstance(holder, dict) else {}
    return holder.get('pid'), holder.get('host')
  except OSError:  # a filesystem without flock: runs there are not locked either
    return None
  finally:
    os.close(fd)
  return None
