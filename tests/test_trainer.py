"""The trainer end to end, in-process, on the tiny lp_regression (8 simulated CPU devices)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import trainer
from trainer import loop
from errors import ConfigError
from conftest import ROOT, load_config
from data import batches, criteo
from tasks.lp_regression import LpRegression

ONE_DEVICE = jax.devices()[:1]


def lines(workdir, split='train'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['split'] == split]


def checkpoint_leaves(workdir):
  """The raw arrays of the latest checkpoint: step, params, optimizer state, RNG."""
  root = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(root) if d.isdigit())
  leaves = ocp.StandardCheckpointer().restore(os.path.join(root, str(step), 'state'))
  return step, [np.asarray(x) for x in leaves.values()]


def run(tmp_path, name='lp_regression_adam', devices=ONE_DEVICE, workdir='run', **overrides):
  config = load_config(name, **overrides)
  return trainer.run(config, str(tmp_path / workdir), name, devices=devices)


def test_tiny_run_writes_every_output(tmp_path):
  summary = run(tmp_path, num_steps=60, eval_every=20, checkpoint_every=30)
  workdir = tmp_path / 'run'
  assert {'config.json', 'metrics.jsonl', 'summary.json', 'checkpoints'} <= set(os.listdir(workdir))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['30', '60']
  on_disk = json.loads((workdir / 'summary.json').read_text())
  assert on_disk == json.loads(json.dumps(summary))
  for key in ('status', 'final_eval', 'steps_to_target', 'train_seconds_to_target', 'train_seconds',
              'total_seconds', 'devices', 'param_count', 'versions', 'name', 'size'):
    assert key in on_disk, key
  assert on_disk['status'] == 'completed' and on_disk['param_count'] == 32
  assert on_disk['devices'] == {'platform': 'cpu', 'kind': 'cpu', 'count': 1, 'process_count': 1}
  assert [r['step'] for r in lines(workdir, 'eval')] == [20, 40, 60]
  assert json.loads((workdir / 'config.json').read_text())['optimizer']['name'] == 'adam'


def test_target_recorded_at_first_eval_that_meets_it(tmp_path):
  summary = run(tmp_path, num_steps=200, eval_every=10, target=('loss', 0.02, 'below'))
  evals = lines(tmp_path / 'run', 'eval')
  first = next(r for r in evals if r['loss'] <= 0.02)
  assert summary['steps_to_target'] == first['step'] < 200
  assert 0 < summary['train_seconds_to_target'] <= summary['train_seconds']
  assert summary['status'] == 'completed'


def test_stop_at_target_ends_the_run_there(tmp_path):
  summary = run(tmp_path, num_steps=400, eval_every=10, target=('loss', 0.02, 'below'),
                stop_at_target=True)
  assert summary['status'] == 'reached_target'
  assert summary['step'] == summary['steps_to_target'] < 400
  assert summary['last_checkpoint_step'] == summary['step']


def test_unreached_target_and_above_direction(tmp_path):
  summary = run(tmp_path, num_steps=20, eval_every=10, target=('mse', 10.0, 'above'))
  assert summary['steps_to_target'] is None and summary['train_seconds_to_target'] is None


def test_train_seconds_exclude_eval_and_compile(tmp_path, monkeypatch):
  pause, evals = 0.4, 4
  original = LpRegression.eval_data

  def slow_eval_data(self, *args):
    time.sleep(pause)
    yield from original(self, *args)

  monkeypatch.setattr(LpRegression, 'eval_data', slow_eval_data)
  s = run(tmp_path, num_steps=40, eval_every=10)
  assert s['eval_seconds'] >= evals * pause
  assert s['compile_seconds'] > 0
  phases = s['train_seconds'] + s['eval_seconds'] + s['compile_seconds'] + s['checkpoint_seconds']
  assert phases <= s['total_seconds']
  # Had eval leaked into training, train_seconds would hold the 1.6 s of planted pauses.
  assert s['train_seconds'] < s['total_seconds'] - evals * pause - s['compile_seconds']
  train_times = [r['train_seconds'] for r in lines(tmp_path / 'run')]
  eval_times = [r['eval_seconds'] for r in lines(tmp_path / 'run', 'eval')]
  assert np.all(np.diff(train_times) >= 0)
  # The train clock stood still across each eval: the step after an eval starts where it left off.
  assert eval_times == sorted(eval_times) and eval_times[-1] >= (evals - 1) * pause


def test_sharded_run_matches_single_device(tmp_path):
  common = dict(num_steps=20, log_every=1, eval_every=10, task__depth=2)
  single = run(tmp_path, workdir='one', **common)
  sharded = run(tmp_path, workdir='eight', devices=jax.devices(), mesh__data=4, mesh__model=2, **common)
  assert sharded['devices']['count'] == 8 and sharded['mesh'] == {'data': 4, 'model': 2}
  one, eight = lines(tmp_path / 'one'), lines(tmp_path / 'eight')
  assert [r['step'] for r in one] == list(range(1, 21))
  np.testing.assert_allclose([r['loss'] for r in eight], [r['loss'] for r in one], rtol=2e-5)
  np.testing.assert_allclose(sharded['final_eval']['loss'], single['final_eval']['loss'], rtol=2e-5)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
  common = dict(num_steps=10, log_every=1, eval_every=10, task__depth=2)
  whole = run(tmp_path, workdir='whole', **common)
  micro = run(tmp_path, workdir='micro', devices=jax.devices(), grad_accum_steps=4, **common)
  np.testing.assert_allclose([r['loss'] for r in lines(tmp_path / 'micro')],
                             [r['loss'] for r in lines(tmp_path / 'whole')], rtol=2e-5)
  np.testing.assert_allclose(micro['final_eval']['loss'], whole['final_eval']['loss'], rtol=2e-5)


def test_resume_after_sigterm_is_exact(tmp_path, monkeypatch):
  common = dict(num_steps=40, log_every=5, eval_every=10, checkpoint_every=15)
  straight = run(tmp_path, workdir='straight', **common)

  progress = loop._Progress.__call__

  def terminated_after_step_19(self, step, t):  # in the loop's thread, once per step
    if step == 19:
      os.kill(os.getpid(), signal.SIGTERM)  # seen at step 20, where the handler lets the run stop
    return progress(self, step, t)

  monkeypatch.setattr(loop._Progress, '__call__', terminated_after_step_19)
  first = run(tmp_path, workdir='resumed', **common)
  assert first['status'] == 'interrupted' and first['step'] == 20 and first['signal'] == 'SIGTERM'
  assert checkpoint_leaves(tmp_path / 'resumed')[0] == 20
  monkeypatch.setattr(loop._Progress, '__call__', progress)
  second = run(tmp_path, workdir='resumed', **common)
  assert second['status'] == 'completed' and second['step'] == 40

  step_a, leaves_a = checkpoint_leaves(tmp_path / 'straight')
  step_b, leaves_b = checkpoint_leaves(tmp_path / 'resumed')
  assert step_a == step_b == 40
  for a, b in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(a, b)  # bitwise: params, optimizer state, step, RNG
  assert second['final_eval'] == straight['final_eval']
  resumed_lines = lines(tmp_path / 'resumed')
  assert [r['step'] for r in resumed_lines] == [r['step'] for r in lines(tmp_path / 'straight')]
  assert [r['loss'] for r in resumed_lines] == [r['loss'] for r in lines(tmp_path / 'straight')]
  assert second['train_seconds'] > first['train_seconds']  # timers carried over


def test_a_resume_seeks_the_input_position_its_checkpoint_kept(tmp_path, monkeypatch):
  """DLRM reads Criteo TSV files: a resumed run continues the stream from the position the
  checkpoint kept (reading one window) and ends bitwise where a straight run does."""
  monkeypatch.setattr(criteo, 'WINDOW', 1000)  # several windows an epoch
  common = dict(task__generated_train=6000, task__generated_eval=500, task__dataset='synthetic_criteo_resume',
                task__embedding_dim=4, task__bottom_mlp=(8,), task__top_mlp=(8,), eval_batch_size=500,
                num_steps=16, log_every=4, eval_every=16, checkpoint_every=8)
  run(tmp_path, 'dlrm_adam', workdir='straight', **common)
  progress, reader, given = loop._Progress.__call__, criteo.train_batches, []

  def terminated_after_step_9(self, step, t):
    if step == 9:
      os.kill(os.getpid(), signal.SIGTERM)
    return progress(self, step, t)

  def recording_reader(*args, position, **kwargs):
    given.append(position)
    return reader(*args, position=position, **kwargs)

  monkeypatch.setattr(loop._Progress, '__call__', terminated_after_step_9)
  assert run(tmp_path, 'dlrm_adam', workdir='resumed', **common)['step'] == 10
  monkeypatch.setattr(loop._Progress, '__call__', progress)
  monkeypatch.setattr(criteo, 'train_batches', recording_reader)
  assert run(tmp_path, 'dlrm_adam', workdir='resumed', **common)['status'] == 'completed'
  assert given[0]['row'] > 0 and given[0]['window'] >= 0  # the kept position, not a replay from the start
  (step_a, leaves_a), (step_b, leaves_b) = (checkpoint_leaves(tmp_path / w) for w in ('straight', 'resumed'))
  assert step_a == step_b == 16
  for a, b in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(a, b)


def test_planted_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  original = LpRegression.train_data

  def nan_at_step_8(self, process_index, process_count, start_step, position=None):
    stream = original(self, process_index, process_count, start_step, position)

    def planted():
      for step, batch in enumerate(stream, start_step):
        if step == 7:
          batch['x'] = np.full_like(batch['x'], np.nan)
        yield batch, stream.position
    return batches.Stream(planted())

  monkeypatch.setattr(LpRegression, 'train_data', nan_at_step_8)
  summary = run(tmp_path, num_steps=30, log_every=10, eval_every=10, checkpoint_every=5)
  assert summary['status'] == 'diverged' and summary['diverged_at_step'] == 8
  assert summary['last_checkpoint_step'] == 5
  step, leaves = checkpoint_leaves(tmp_path / 'run')
  assert step == 5 and all(np.all(np.isfinite(x)) for x in leaves)
  assert json.loads((tmp_path / 'run' / 'summary.json').read_text())['status'] == 'diverged'


def test_non_finite_eval_marks_the_run_diverged(tmp_path, monkeypatch):
  """A diverging run whose train loss is still finite can evaluate to inf or NaN: diverged, not a
  metric writer's traceback."""
  original = LpRegression.eval_data

  def nan_eval_data(self, *args):
    for batch in original(self, *args):
      yield {**batch, 'x': np.full_like(batch['x'], np.nan)}

  monkeypatch.setattr(LpRegression, 'eval_data', nan_eval_data)
  summary = run(tmp_path, num_steps=30, log_every=10, eval_every=10, checkpoint_every=5)
  assert summary['status'] == 'diverged' and summary['diverged_at_step'] == 10
  assert summary['last_checkpoint_step'] == 5


def test_finished_run_is_not_rerun(tmp_path):
  first = run(tmp_path, num_steps=10, eval_every=5)
  mtime = os.path.getmtime(tmp_path / 'run' / 'metrics.jsonl')
  again = run(tmp_path, num_steps=10, eval_every=5)
  assert again == json.loads(json.dumps(first))
  assert os.path.getmtime(tmp_path / 'run' / 'metrics.jsonl') == mtime


def test_changed_config_is_refused_on_an_existing_run(tmp_path):
  run(tmp_path, num_steps=10, eval_every=5)
  files = lambda: {f: os.path.getmtime(tmp_path / 'run' / f) for f in os.listdir(tmp_path / 'run')
                   if f != '.lock'}  # the workdir lock, which the refused run held while it checked
  before = files()
  with pytest.raises(ConfigError, match='optimizer.learning_rate'):
    run(tmp_path, num_steps=10, eval_every=5, optimizer__learning_rate=0.5)
  assert before == files()
  resumed = run(tmp_path, num_steps=20, eval_every=5)  # run-length changes are allowed
  assert resumed['step'] == 20


@pytest.mark.parametrize('overrides,message', [
    (dict(task__name='mnist'), "unknown task 'mnist'"),
    (dict(optimizer__b1=2.0), 'optimizer.b1'),
    (dict(global_batch_size=100, mesh__data=8), 'divisible'),
    (dict(global_batch_size=128, grad_accum_steps=3), 'grad_accum_steps=3'),
    (dict(target=('bleu', 1.0, 'above')), "'bleu' is not an eval metric"),
    (dict(target=('loss', 1.0, 'sideways')), 'direction'),
    (dict(num_steps=0), 'num_steps=0'),
    (dict(schedule__warmup_steps=10_000), 'warmup_steps'),
    (dict(task__generate=False, task__dataset='nowhere'), 'no gas-sensor data'),
    (dict(optimizer__learning_rate=float('nan')), 'optimizer.learning_rate=nan must be a finite number'),
    (dict(task__init_scale=float('inf')), 'task.init_scale=inf must be a finite number'),
    (dict(target=('loss', float('nan'), 'below')), 'target=.* must be a finite number'),
])
def test_bad_config_is_refused_before_the_workdir_exists(tmp_path, overrides, message):
  with pytest.raises(ConfigError, match=message):
    run(tmp_path, devices=jax.devices(), **overrides)
  assert not (tmp_path / 'run').exists()


def test_shampoo_with_stacks_sharded_over_8_devices_matches_one_device(tmp_path):
  # block_size 4 cuts the 32x32 hidden kernel into 64 blocks: 128 statistics, 16 per device.
  # Damping 1e-3 keeps roots well conditioned: at condition ~1e6 float32 roots carry ~1e-3
  # relative error, and different reduction orders would differ at that level.
  common = dict(num_steps=12, log_every=1, eval_every=12, task__depth=2, optimizer__block_size=4,
                optimizer__start_preconditioning_step=2, optimizer__matrix_epsilon=1e-3)
  run(tmp_path, 'lp_regression_shampoo', workdir='one', **common)
  run(tmp_path, 'lp_regression_shampoo', workdir='eight', devices=jax.devices(), mesh__data=4,
      mesh__model=2, **common)
  np.testing.assert_allclose([r['loss'] for r in lines(tmp_path / 'eight')],
                             [r['loss'] for r in lines(tmp_path / 'one')], rtol=1e-4)


def test_root_health_is_always_logged_and_details_only_when_enabled(tmp_path, capsys):
  common = dict(num_steps=20, log_every=10, eval_every=20, optimizer__preconditioning_compute_steps=5,
                optimizer__start_preconditioning_step=1)
  run(tmp_path, 'lp_regression_shampoo', workdir='off', **common)
  logged = lines(tmp_path / 'off')
  assert all(r['shampoo_failed_roots_total'] == 0 and r['shampoo_graft_share'] == 0 and
             r['shampoo_refresh_failed_share'] == 0 and 'shampoo_max_root_error' not in r for r in logged)
  run(tmp_path, 'lp_regression_shampoo', workdir='on', log_optimizer_metrics=True, **common)
  logged = lines(tmp_path / 'on')
  # refreshes at t = 1 (the start step), 5, 10, 15: 2 by step 10, 4 by step 20
  assert [r['shampoo_root_refreshes_total'] for r in logged] == [2, 4]
  assert all(r['shampoo_failed_roots_total'] == 0 and r['shampoo_max_root_error'] < 0.1 for r in logged)
  assert 'warning' not in capsys.readouterr().out


def test_a_run_whose_roots_all_fail_says_so_once(tmp_path, capsys):
  """Every root rejected (a threshold no root meets): Shampoo is its graft, and the run says it."""
  run(tmp_path, 'lp_regression_shampoo', num_steps=30, log_every=10, eval_every=30,
      optimizer__preconditioning_compute_steps=5, optimizer__start_preconditioning_step=1,
      optimizer__inverse_failure_threshold=1e-30)
  logged = lines(tmp_path / 'run')
  assert [r['shampoo_graft_share'] for r in logged] == [1.0, 1.0, 1.0]
  assert all(r['shampoo_refresh_failed_share'] == 1.0 for r in logged)
  warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith('warning:')]
  assert len(warnings) == 1 and '100% of shampoo\'s roots failed' in warnings[0]


def test_a_lost_summary_is_rebuilt_from_the_final_checkpoint_without_training(tmp_path):
  first = run(tmp_path, num_steps=20, eval_every=10)
  metrics_before = (tmp_path / 'run' / 'metrics.jsonl').read_text()
  (tmp_path / 'run' / 'summary.json').unlink()  # as if killed after the last checkpoint
  rebuilt = run(tmp_path, num_steps=20, eval_every=10)
  assert rebuilt['status'] == 'completed' and rebuilt['step'] == 20
  assert rebuilt['final_eval'] == first['final_eval']
  # from the final checkpoint, saved a few microseconds before the first run stopped its clock
  assert rebuilt['train_seconds'] == pytest.approx(first['train_seconds'], abs=1e-2)
  assert (tmp_path / 'run' / 'metrics.jsonl').read_text() == metrics_before
  assert json.loads((tmp_path / 'run' / 'summary.json').read_text())['status'] == 'completed'


def test_a_run_stopped_at_its_target_is_not_resumed(tmp_path):
  common = dict(num_steps=400, eval_every=10, target=('loss', 0.02, 'below'), stop_at_target=True)
  first = run(tmp_path, **common)
  again = run(tmp_path, **common)
  assert again == json.loads(json.dumps(first)) and again['status'] == 'reached_target'
  (tmp_path / 'run' / 'summary.json').unlink()
  rebuilt = run(tmp_path, **common)
  assert rebuilt['status'] == 'reached_target' and rebuilt['step'] == first['step']


FAULTS_SCRIPT = """
import resource, sys
import numpy as np
sys.path.insert(0, 'trainer')
import host_memory

def faults_per_cycle():  # a 48 MB block allocated, touched and freed, as XLA's step temporaries are
  np.ones(12 << 20, np.float32)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    np.ones(12 << 20, np.float32)
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

print(faults_per_cycle(), host_memory.keep_freed_memory(), faults_per_cycle())
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason="glibc's allocator policy")
def test_keep_freed_memory_stops_each_large_block_from_faulting_its_pages_in_again():
  env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
  out = subprocess.run([sys.executable, '-c', FAULTS_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  before, applied, after = float(out[0]), out[1] == 'True', float(out[2])
  # 48 MB: 12288 pages of 4 KiB, 24 transparent huge pages of 2 MiB: every cycle faults them in again
  assert applied and before >= 20 and after <= before / 20, out


def test_a_pause_inside_another_is_charged_to_its_own_phase_only():
  timer = trainer.timing.RunTimer()
  start = time.perf_counter()
  with timer.pause('eval'):
    time.sleep(0.05)
    with timer.pause('compile'):
      time.sleep(0.1)
  wall = time.perf_counter() - start
  assert timer.seconds['compile'] >= 0.1 and timer.seconds['eval'] >= 0.05
  assert timer.seconds['eval'] + timer.seconds['compile'] <= wall


def test_a_second_run_in_a_workdir_in_use_is_refused(tmp_path):
  run(tmp_path, num_steps=5)
  with trainer.workdir.WorkdirLock(str(tmp_path / 'run')):
    with pytest.raises(ConfigError, match=r'workdir .*run is in use by pid \d+ on host'):
      run(tmp_path, num_steps=10)
  assert run(tmp_path, num_steps=10)['step'] == 10
