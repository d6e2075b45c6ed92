"""The workdir lock: a second run in a workdir fails at once; a dead run's lock is taken over."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from conftest import ROOT
from errors import ConfigError
from trainer import workdir as workdirs

# The child loads trainer/workdir.py alone: importing the trainer package would start JAX.
HOLDER = f'''
import importlib.util, sys, time
sys.path.insert(0, {ROOT!r})
spec = importlib.util.spec_from_file_location('workdir', {os.path.join(ROOT, 'trainer', 'workdir.py')!r})
workdir = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workdir)
with workdir.WorkdirLock(sys.argv[1]):
  print('locked', flush=True)
  if sys.argv[2] == 'hold':
    time.sleep(60)
'''


def start_holder(path, mode='hold'):
  child = subprocess.Popen([sys.executable, '-c', HOLDER, str(path), mode], stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline() == 'locked\n'
  return child


def lock_record(path):
  with open(os.path.join(path, workdirs.LOCK_FILE)) as f:
    return f.read()


def test_a_second_run_fails_and_a_killed_runs_lock_is_taken_over(tmp_path, caplog):
  child = start_holder(tmp_path)
  try:
    with pytest.raises(ConfigError) as error:
      workdirs.WorkdirLock(str(tmp_path))
    assert str(error.value) == f'workdir {tmp_path} is in use by pid {child.pid} on host {socket.gethostname()}'
    assert json.loads(lock_record(tmp_path)) == {'pid': child.pid, 'host': socket.gethostname()}
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  with caplog.at_level(logging.WARNING), workdirs.WorkdirLock(str(tmp_path)):
    assert json.loads(lock_record(tmp_path)) == {'pid': os.getpid(), 'host': socket.gethostname()}
    with pytest.raises(ConfigError, match=f'in use by pid {os.getpid()} on host'):  # also within one process
      workdirs.WorkdirLock(str(tmp_path))
  assert [r.getMessage() for r in caplog.records] == [
      f'workdir {tmp_path}: taking over the lock of pid {child.pid}, which is no longer running']


def test_the_lock_is_released_on_exit_and_taken_again_without_a_word(tmp_path, caplog):
  child = start_holder(tmp_path / 'run', mode='exit')  # leaves its `with` block and exits normally
  assert child.wait() == 0 and lock_record(tmp_path / 'run') == ''
  with caplog.at_level(logging.WARNING):
    with workdirs.locked(str(tmp_path / 'run')) as lock:
      assert isinstance(lock, workdirs.WorkdirLock)
    assert lock_record(tmp_path / 'run') == ''
    with workdirs.WorkdirLock(str(tmp_path / 'run')) as lock:
      lock.release()
      lock.release()
    with workdirs.locked(str(tmp_path / 'other'), enabled=False) as lock:  # a process other than 0
      assert lock is None and not os.path.exists(tmp_path / 'other')
  assert not caplog.records


def test_a_free_lock_naming_a_live_pid_is_taken_over(tmp_path, caplog):
  """A recycled pid, or a holder on another host: the free flock, not the record, decides."""
  with open(tmp_path / workdirs.LOCK_FILE, 'w') as f:
    json.dump({'pid': os.getpid(), 'host': 'elsewhere'}, f)
  with caplog.at_level(logging.WARNING), workdirs.WorkdirLock(str(tmp_path)):
    pass
  assert [r.getMessage() for r in caplog.records] == [
      f'workdir {tmp_path}: taking over the lock of pid {os.getpid()} on host elsewhere, which no longer holds it']


def test_a_workdir_that_cannot_be_one_is_one_line(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(ConfigError, match='exists and is not a directory'):
    workdirs.WorkdirLock(str(tmp_path / 'file'))
