"""Runs that stop short: a diverged run exits 3, a disk that refuses a write exits 2 before training and
3 during it, a signal before training exits 128 + its number. Each says so in one line, never a
traceback, and keeps the last good checkpoint: a rerun resumes from it."""

import builtins
import errno
import inspect
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from clu.metric_writers import SummaryWriter

import trainer
from conftest import ROOT, load_config
from errors import ConfigError
from data import batches
from tasks.lp_regression import LpRegression
from trainer import loop, workdir as workdirs

NAME = 'lp_regression_adam'
COMMON = dict(num_steps=30, log_every=5, eval_every=10, checkpoint_every=10)
MAIN_ARGS = [f'--config.{key}={value}' for key, value in COMMON.items()]


def run(workdir, **overrides):
  return trainer.run(load_config(NAME, **{**COMMON, **overrides}), str(workdir), NAME, devices=jax.devices()[:1])


def main(workdir, *args, hook=''):
  """main.py as a user runs it, after `hook` (Python source) has run in its process."""
  argv = ['main.py', f'--config={ROOT}/configs/{NAME}.py:tiny', f'--workdir={workdir}', *args]
  code = f'{hook}\nimport runpy, sys\nsys.argv = {argv!r}\nrunpy.run_path("main.py", run_name="__main__")'
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def refusing_open(real_open, matches, after):
  """`open` as on a full disk (ENOSPC) for writes to the files `matches` picks, once `after` went through."""
  left = [after]

  def fake_open(file, mode='r', *args, **kwargs):
    if not isinstance(file, int) and set(mode) & set('wax+') and matches(str(file)):
      if not left[0]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
      left[0] -= 1
    return real_open(file, mode, *args, **kwargs)
  return fake_open


def hook_refusing(matches: str, after: int) -> str:
  """Python source that makes `builtins.open` a `refusing_open(matches, after)` in a main.py process."""
  return (f'import builtins, errno, os\n{inspect.getsource(refusing_open)}\n'
          f'builtins.open = refusing_open(builtins.open, {matches}, {after})')


def checkpoints(workdir) -> dict[int, list[np.ndarray]]:
  """Every checkpoint step on disk, with its arrays."""
  root = workdir / 'checkpoints'
  return {int(step): [np.asarray(x) for x in ocp.StandardCheckpointer().restore(root / step / 'state').values()]
          for step in os.listdir(root) if step.isdigit()}


def chmod_refuses(tmp_path) -> bool:
  """Whether a read-only folder refuses this process (not so for root, which overrides permissions)."""
  probe = tmp_path / 'probe'
  probe.mkdir(mode=0o555)
  try:
    (probe / 'file').touch()
  except PermissionError:
    return True
  finally:
    probe.chmod(0o755)
  return False


def test_divergence_exits_3_naming_the_leaf_and_saves_no_non_finite_state(tmp_path):
  workdir = tmp_path / 'run'
  # 1e39 is inf in float32: the first update makes the parameters inf while its loss was finite.
  result = main(workdir, '--config.optimizer.learning_rate=1e39', '--config.num_steps=20',
                '--config.log_every=10', '--config.checkpoint_every=1')
  assert result.returncode == 3, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert [line for line in result.stderr.splitlines() if line.startswith('error:')] == [
      f'error: training diverged at step 1 (first non-finite leaf params/layer0/kernel); '
      f'no checkpoint saved in {workdir}']
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['status'] == 'diverged' and summary['diverged_at_step'] == 1
  assert summary['non_finite_leaf'] == 'params/layer0/kernel' and summary['non_finite_metric'] is None
  assert checkpoints(workdir) == {}  # step 1 was due, with inf parameters


def test_a_non_finite_optimizer_state_is_never_saved(tmp_path, monkeypatch):
  """Adam's second moment turned inf at step 10 stops every later update, so the loss stays finite:
  only the state check sees it."""
  make_train_step = loop._make_train_step

  def poisoned(*args):
    train_step = make_train_step(*args)

    def step(state, batch):
      state, metrics = train_step(state, batch)
      adam = state.opt_state[0]
      nu = jax.tree.map(lambda x: jnp.where(state.step == 10, jnp.inf, x), adam.nu)
      return state.replace(opt_state=(adam._replace(nu=nu), *state.opt_state[1:])), metrics
    return step

  monkeypatch.setattr(loop, '_make_train_step', poisoned)
  summary = run(tmp_path / 'run', checkpoint_every=5)
  assert summary['status'] == 'diverged' and summary['diverged_at_step'] == 10
  assert summary['non_finite_leaf'] == 'opt_state/0/nu/layer0/kernel' and summary['non_finite_metric'] is None
  assert summary['last_checkpoint_step'] == 5 and np.isfinite(summary['final_train']['loss'])
  saved = checkpoints(tmp_path / 'run')
  assert list(saved) == [5] and all(np.isfinite(x).all() for x in saved[5])


@pytest.mark.parametrize('name,field', [('lp_regression_shampoo', 'root_errors'), ('lp_regression_kfac', 'rho')])
def test_state_non_finite_by_design_is_not_divergence(name, field):
  """Shampoo records a failed root's error as inf, K-FAC its rho as NaN until its first adaptation."""
  setup = loop.set_up(load_config(name), jax.devices()[:1], name)
  state = jax.jit(setup.init_state, out_shardings=setup.shardings.state)(setup.train_rng)
  first_non_finite = loop.finite_check(setup, state)
  in_field = lambda path: any(getattr(key, 'name', None) == field for key in path)
  assert any(in_field(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0])
  records = jax.tree_util.tree_map_with_path(lambda path, x: jnp.full_like(x, jnp.nan) if in_field(path) else x,
                                             state)
  assert first_non_finite(records) is None
  assert first_non_finite(state.replace(params=jax.tree.map(lambda x: x * jnp.inf, state.params))) == \
      'params/layer0/kernel'


def test_a_refused_checkpoint_write_exits_3_with_one_line_and_a_rerun_resumes(tmp_path):
  """Orbax writes step 20 in the background: its failure surfaces at the next save, and orbax's own
  tracebacks (logged, and again when its unfinished tasks are collected at exit) are not shown."""
  workdir = tmp_path / 'run'
  result = main(workdir, *MAIN_ARGS, hook=hook_refusing("lambda path: '/checkpoints/20.' in path", 0))
  assert result.returncode == 3, result.stderr[-2000:]
  assert result.stderr.splitlines() == [
      f'error: cannot write checkpoint step 20 to {workdir}/checkpoints/20: No space left on device; '
      f'last good checkpoint: step 10 in {workdir}'], result.stderr[-3000:]
  assert list(checkpoints(workdir)) == [10]
  summary = run(workdir)  # the disk has room again
  assert summary['status'] == 'completed' and summary['step'] == 30
  assert sorted(checkpoints(workdir)) == [20, 30]


@pytest.mark.parametrize('what', ['metrics', 'events'])
def test_a_refused_metrics_write_stops_the_run_naming_the_file(tmp_path, monkeypatch, what):
  workdir = tmp_path / 'run'
  if what == 'metrics':  # appends at steps 5, 10 (train), 10 (eval); the one of step 15 fails
    monkeypatch.setattr(builtins, 'open', refusing_open(builtins.open, lambda path: path.endswith('.jsonl'), 3))
    message = f'cannot write step 15 metrics to {workdir}/metrics.jsonl: No space left on device'
  else:
    events = f'{workdir}/events.out.tfevents.1'
    written = []

    def write_scalars(self, step, scalars):  # TensorFlow's error, as its summary writer raises it
      written.append(step)
      if len(written) > 3:
        raise tf.errors.ResourceExhaustedError(
            None, None, f'{{{{function_node __wrapped__FlushSummaryWriter}}}} {events}; No space left on device\n'
            f'\tFailed to flush 10 events to {events}')

    monkeypatch.setattr(SummaryWriter, 'write_scalars', write_scalars)
    message = f'cannot write TensorBoard events to {events}: No space left on device'
  with pytest.raises(workdirs.WriteError) as error:
    run(workdir)
  assert str(error.value) == f'{message}; last good checkpoint: step 10 in {workdir}'


def test_a_refused_write_before_training_is_a_workdir_the_run_cannot_use(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  monkeypatch.setattr(builtins, 'open', refusing_open(builtins.open, lambda path: 'config.json' in path, 0))
  with pytest.raises(ConfigError) as error:  # main.py: exit 2
    run(workdir)
  assert str(error.value) == f'cannot write config.json to {workdir}/config.json: No space left on device'


def test_a_read_only_workdir_is_refused_and_a_read_only_checkpoints_folder_stops_the_run(tmp_path, monkeypatch):
  if not chmod_refuses(tmp_path):
    pytest.skip('this process writes to read-only folders (root with CAP_DAC_OVERRIDE)')
  workdir = tmp_path / 'run'
  run(workdir, num_steps=10)
  workdir.chmod(0o555)
  try:
    with pytest.raises(ConfigError, match=f'^workdir {workdir} is not writable$'):
      run(workdir)
  finally:
    workdir.chmod(0o755)

  original = LpRegression.train_data

  def read_only_from_step_15(self, process_index, process_count, start_step, position=None):
    stream = original(self, process_index, process_count, start_step, position)

    def refused():
      for step, batch in enumerate(stream, start_step):
        if step == 15:
          (workdir / 'checkpoints').chmod(0o555)
        yield batch, stream.position
    return batches.Stream(refused())

  monkeypatch.setattr(LpRegression, 'train_data', read_only_from_step_15)
  try:
    with pytest.raises(workdirs.WriteError) as error:
      run(workdir)
  finally:
    (workdir / 'checkpoints').chmod(0o755)
  assert str(error.value) == (f'cannot write checkpoint step 20 to {workdir}/checkpoints/20: Permission denied; '
                              f'last good checkpoint: step 10 in {workdir}')
  assert list(checkpoints(workdir)) == [10]


SIGTERM_WHILE_COMPILING = '''
import os, signal
from trainer import loop
compile_steps = loop.compile_steps

def compile_steps_signalled(*args):
  os.kill(os.getpid(), signal.SIGTERM)
  return compile_steps(*args)

loop.compile_steps = compile_steps_signalled
'''


def test_sigterm_during_the_first_compile_exits_cleanly_and_a_rerun_completes(tmp_path):
  workdir = tmp_path / 'run'
  result = main(workdir, *MAIN_ARGS, hook=SIGTERM_WHILE_COMPILING)
  assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
  assert result.stderr == ''
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['status'] == 'interrupted' and summary['signal'] == 'SIGTERM' and summary['step'] == 0
  assert checkpoints(workdir) == {} and not (workdir / 'metrics.jsonl').exists()
  summary = run(workdir)
  assert summary['status'] == 'completed' and summary['step'] == 30


def test_sigint_during_set_up_stops_the_run_before_training(tmp_path, monkeypatch):
  original = LpRegression.prepare_data

  def interrupted(self):
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the run's handler is in place
    original(self)

  monkeypatch.setattr(LpRegression, 'prepare_data', interrupted)
  before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a pytest-xdist worker
  summary = run(tmp_path / 'run')
  assert summary['status'] == 'interrupted' and summary['signal'] == 'SIGINT' and summary['step'] == 0
  assert summary['final_train'] is None and summary['last_checkpoint_step'] is None
  assert signal.getsignal(signal.SIGINT) == before  # handed back
