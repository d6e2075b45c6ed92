"""A trial's run status, as its `main.py` run (and the launcher that ran it) left it in its workdir.

Both the sweep (to index trials and skip finished ones) and the backends (to tell
how a trial they ran ended) read it; it depends on neither. Run as
`python -m launch.trial_status WORKDIR EXIT_CODE LOG`, it records how a trial ended
for the Slurm script, which has no launcher process to do it.
"""

import fcntl
import json
import os
import signal
import sys

SUMMARY_FILE = 'summary.json'  # what main.py writes when a run ends
# trainer/workdir.py's lock: the run using the workdir holds an flock on it for its life and writes
# {"pid": .., "host": ..} into it (empty once released).
LOCK_FILE = '.lock'
# A launcher's record of a trial whose command exited with a code its summary does not explain:
# {"exit_code": .., "log": ..}. It outranks summary.json, so a sweep neither counts nor skips the
# trial; the launcher removes it when it starts the trial again.
FAILED_FILE = 'failed.json'
FINISHED = ('completed', 'reached_target', 'diverged')
# main.py's exit code per status: a diverged run exits 3, a run stopped by a signal 128 + its number.
EXIT_CODES = {'completed': {0}, 'reached_target': {0}, 'diverged': {3},
              'interrupted': {128 + signal.SIGTERM, 128 + signal.SIGINT}}


def summary(workdir: str) -> dict:
  """The run's summary.json ({} until the run ends)."""
  try:
    with open(os.path.join(workdir, SUMMARY_FILE)) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}


def failure(workdir: str) -> dict:
  """The launcher's record of the trial's failed command ({} when there is none)."""
  try:
    with open(os.path.join(workdir, FAILED_FILE)) as f:
      record = json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}
  return record if isinstance(record, dict) else {}


def status(workdir: str) -> str:
  """'failed' when a launcher recorded a failed command, else the status in summary.json, else 'pending'."""
  if os.path.exists(os.path.join(workdir, FAILED_FILE)):
    return 'failed'
  return summary(workdir).get('status') or 'pending'


def clear_failure(workdir: str) -> None:
  """Forgets a failed attempt: called as the trial starts again."""
  try:
    os.remove(os.path.join(workdir, FAILED_FILE))
  except FileNotFoundError:
    pass


def ended(workdir: str, exit_code: int, log: str) -> str:
  """The trial's status once its command exited with `exit_code`.

  The run's own status when the exit code is main.py's for it (exit 0 leaves whatever the
  workdir shows, 'pending' where a remote sweep dir is not mounted); 'running' when another
  launcher's run holds the workdir (main.py refused to start a second one); else 'failed', recorded
  in FAILED_FILE with the exit code and the log: a non-zero exit is never taken for a result, even
  over a finished summary.json.
  """
  run_status = status(workdir)
  if exit_code == 0 or exit_code in EXIT_CODES.get(run_status, ()):
    return run_status
  if lock_holder(workdir) is not None:
    return 'running'
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, FAILED_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump({'exit_code': exit_code, 'log': log}, f)
    f.write('\n')
  os.replace(path + '.tmp', path)
  return 'failed'


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


if __name__ == '__main__':
  trial_workdir, code, trial_log = sys.argv[1:]
  print(f'trial {os.path.basename(trial_workdir)}: exit {code}, {ended(trial_workdir, int(code), trial_log)}')
