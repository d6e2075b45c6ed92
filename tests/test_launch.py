"""launch/: search spaces, trial naming and checking, the local sweep (interrupted and resumed), dry runs."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, load_config, subprocess_env
from errors import ConfigError
from launch import space, sweep, trial_status
from trainer import workdir as workdirs  # the run's side of the lock that the sweep reads

LP = 'configs/lp_regression_adam.py:tiny'


def test_grid_is_the_product_in_order_within_the_budget():
  points = space.points({'a': space.grid(1, 2), 'b': space.grid('x', 'y', 'z')}, trials=None)
  assert points == [{'a': a, 'b': b} for a in (1, 2) for b in 'xyz']
  assert space.log_grid(1e-3, 1e-1, 5).values == (0.001, 0.00316, 0.01, 0.0316, 0.1)
  with pytest.raises(ValueError, match='the grid has 6 points, over the budget of trials=5'):
    space.points({'a': space.grid(1, 2), 'b': space.grid('x', 'y', 'z')}, trials=5)
  with pytest.raises(ValueError, match='search space is empty'):
    space.points({}, trials=3)


def test_random_points_are_reproducible_rounded_and_in_range():
  dims = {'lr': space.log_uniform(1e-4, 1e-1), 'b1': space.uniform(0.8, 0.99), 'wd': space.grid(0.0, 1e-4)}
  points = space.points(dims, trials=50, seed=3)
  assert points == space.points(dims, trials=50, seed=3) != space.points(dims, trials=50, seed=4)
  lrs = [p['lr'] for p in points]
  assert all(1e-4 <= lr <= 1e-1 and float(f'{lr:.3g}') == lr for lr in lrs)
  assert sum(lr < 1e-2 for lr in lrs) > 25  # log-uniform: two of three decades below 1e-2
  assert all(0.8 <= p['b1'] <= 0.99 for p in points) and {p['wd'] for p in points} == {0.0, 1e-4}
  with pytest.raises(ValueError, match='needs a trial budget'):
    space.points(dims, trials=None)


def test_trials_are_named_by_their_values_and_checked_against_the_config(tmp_path):
  config = load_config('lp_regression_adam')
  spec = dict(space={'optimizer.learning_rate': space.grid(0.01, 0.1), 'task.depth': space.grid(1, 2)},
              seeds=[0, 1], fixed={'num_steps': 50})
  trials = sweep.trials(config, spec, str(tmp_path))
  assert [t.id for t in trials[:3]] == ['learning_rate=0.01,depth=1,seed=0', 'learning_rate=0.01,depth=1,seed=1',
                                        'learning_rate=0.01,depth=2,seed=0']
  assert len({t.workdir for t in trials}) == 8
  assert trials[-1].overrides == {'num_steps': 50, 'optimizer.learning_rate': 0.1, 'task.depth': 2, 'seed': 1}
  assert trials[-1].main_args(LP)[2:] == ['--config.num_steps=50', '--config.optimizer.learning_rate=0.1',
                                          '--config.task.depth=2', '--config.seed=1']
  with pytest.raises(sweep.SweepError, match='unknown config key optimizer.lr'):
    sweep.trials(config, dict(space={'optimizer.lr': space.grid(0.1)}), str(tmp_path))
  with pytest.raises(sweep.SweepError, match='num_steps=1.5'):
    sweep.trials(config, dict(space={'num_steps': space.grid(1.5)}), str(tmp_path))
  with pytest.raises(sweep.SweepError, match='seeds='):
    sweep.trials(config, dict(space={'seed': space.grid(1, 2)}), str(tmp_path))


def test_set_overrides_fixed_values_and_never_a_varied_one(tmp_path):
  config = load_config('lp_regression_adam')
  spec = dict(space={'optimizer.learning_rate': space.grid(0.01, 0.1)}, fixed={'num_steps': 50, 'task.depth': 1})
  settings = sweep.parse_settings(['task.depth=2', 'optimizer.learning_rate=0.5', "task.activation='tanh'",
                                   'parameterization=mup'])
  assert settings == {'task.depth': 2, 'optimizer.learning_rate': 0.5, 'task.activation': 'tanh',
                      'parameterization': 'mup'}
  trials = sweep.trials(config, spec, str(tmp_path), settings)
  assert [t.id for t in trials] == ['learning_rate=0.01,seed=0', 'learning_rate=0.1,seed=0']
  assert trials[1].overrides == {'num_steps': 50, 'task.depth': 2, 'task.activation': 'tanh',
                                 'parameterization': 'mup', 'optimizer.learning_rate': 0.1, 'seed': 0}
  with pytest.raises(sweep.SweepError, match='expected KEY=VALUE'):
    sweep.parse_settings(['task.depth'])
  with pytest.raises(sweep.SweepError, match="task.depth='two'"):
    sweep.trials(config, spec, str(tmp_path), sweep.parse_settings(['task.depth=two']))


SWEEP_FILE = '''
from launch import space

def get_sweep(config):
  return dict(space={'optimizer.learning_rate': space.grid(0.01, 0.02, 0.03)}, seeds=[0],
              fixed={'num_steps': %d, 'eval_every': 1000, 'log_every': 100, 'checkpoint_every': 100000})
'''


def launch_sweep(sweep_file, sweep_dir, *args, wait=True):
  command = [sys.executable, '-m', 'launch.sweep', f'--config={LP}', f'--sweep={sweep_file}',
             f'--sweep_dir={sweep_dir}', *args]
  env = subprocess_env(1)  # trials need no mesh
  if wait:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def index(sweep_dir):
  with open(os.path.join(sweep_dir, 'sweep.json')) as f:
    return {entry['id']: entry for entry in json.load(f)['trials']}


def test_interrupted_sweep_resumes_without_repeating_finished_trials(tmp_path):
  sweep_file, sweep_dir = tmp_path / 'lr.py', str(tmp_path / 'sweep')
  sweep_file.write_text(SWEEP_FILE % 1000)
  first, second, third = (f'{sweep_dir}/learning_rate={lr},seed=0' for lr in (0.01, 0.02, 0.03))
  process = launch_sweep(sweep_file, sweep_dir, wait=False)
  deadline = time.monotonic() + 240
  while not os.path.exists(f'{second}/metrics.jsonl'):  # the second trial is training
    assert time.monotonic() < deadline and process.poll() is None, process.stdout.read()
    time.sleep(0.2)
  process.send_signal(signal.SIGINT)
  output = process.communicate(timeout=120)[0]
  assert process.returncode == 128 + signal.SIGINT, output
  assert 'run it again to resume' in output
  statuses = {key: entry['status'] for key, entry in index(sweep_dir).items()}
  assert statuses == {'learning_rate=0.01,seed=0': 'completed', 'learning_rate=0.02,seed=0': 'interrupted',
                      'learning_rate=0.03,seed=0': 'pending'}
  with open(f'{first}/metrics.jsonl') as f:
    finished_metrics = f.read()
  stat = os.stat(f'{first}/summary.json')

  result = launch_sweep(sweep_file, sweep_dir)
  assert result.returncode == 0, result.stdout + result.stderr
  assert '3 trials, 1 already finished, 2 to run' in result.stdout
  assert 'started  learning_rate=0.01' not in result.stdout
  entries = index(sweep_dir)
  assert {e['status'] for e in entries.values()} == {'completed'} and {e['step'] for e in entries.values()} == {1000}
  with open(f'{first}/metrics.jsonl') as f:
    assert f.read() == finished_metrics
  assert os.stat(f'{first}/summary.json').st_mtime_ns == stat.st_mtime_ns
  with open(f'{second}/summary.json') as f:
    resumed = json.load(f)
  assert resumed['status'] == 'completed' and resumed['step'] == 1000
  with open(f'{second}/metrics.jsonl') as f:
    steps = [json.loads(line)['step'] for line in f if '"train"' in line]
  # Resumed where it stopped (its last window ended at the signal): no step twice, none missing.
  assert steps == sorted(set(steps)) and set(range(100, 1001, 100)) <= set(steps) and steps[-1] == 1000
  with open(f'{third}/config.json') as f:
    assert json.load(f)['optimizer']['learning_rate'] == 0.03

  again = launch_sweep(sweep_file, sweep_dir)
  assert again.returncode == 0 and '3 already finished, 0 to run' in again.stdout
  changed = launch_sweep(sweep_file, sweep_dir, '--set', 'optimizer.eps=1e-6')  # its finished runs are not these
  assert changed.returncode == 2 and 'holds the sweep with --set (none), not optimizer.eps=1e-06' in changed.stderr
  varied = launch_sweep(sweep_file, sweep_dir, '--set', 'optimizer.learning_rate=0.5')  # each trial sets its own
  assert varied.returncode == 0 and '3 already finished, 0 to run' in varied.stdout

  # results.compare reads the sweep: its best trial (steps to target, then final loss) is the adam row.
  reached = [e for e in entries.values() if e['steps_to_target'] is not None]
  best = min(reached, key=lambda e: (e['steps_to_target'], e['final_eval']['loss']))
  compare = subprocess.run([sys.executable, '-m', 'results.compare', sweep_dir, f'--out={tmp_path}/cmp'],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert compare.returncode == 0, compare.stderr
  row = next(line for line in compare.stdout.splitlines() if line.startswith('| adam |'))
  assert f'| {best["steps_to_target"]} | 1.00 |' in row
  assert f'optimizer.learning_rate={best["overrides"]["optimizer.learning_rate"]} |' in row
  assert os.path.getsize(f'{tmp_path}/cmp/lp_regression_curves.png') > 10_000


def test_dry_runs_print_commands_for_pending_trials_only(tmp_path):
  sweep_file, sweep_dir = tmp_path / 'lr.py', str(tmp_path / 'sweep')
  sweep_file.write_text(SWEEP_FILE % 50)
  done = os.path.join(sweep_dir, 'learning_rate=0.01,seed=0')
  os.makedirs(done)
  with open(os.path.join(done, 'summary.json'), 'w') as f:
    json.dump({'status': 'reached_target'}, f)

  tpu = launch_sweep(sweep_file, sweep_dir, '--backend=tpu', '--tpu=pod', '--zone=us-central2-b', '--dry_run')
  assert tpu.returncode == 0, tpu.stderr
  copy, install, *commands = [line for line in tpu.stdout.splitlines() if line.startswith('gcloud')]
  assert copy.startswith('gcloud compute tpus tpu-vm scp ') and 'make install ACCEL=tpu' in install
  assert len(commands) == 2 and all('--worker=all' in c and '.venv/bin/python main.py --multihost' in c for c in commands)
  assert 'learning_rate=0.02' in commands[0] and 'learning_rate=0.01' not in tpu.stdout.split('\n', 1)[1]

  slurm = launch_sweep(sweep_file, sweep_dir, '--backend=slurm', '--nodes=2', '--gpus_per_node=4', '--dry_run')
  assert slurm.returncode == 0, slurm.stderr
  _, submit, script = slurm.stdout.split('\n', 2)
  submit = shlex.split(submit)  # the job's options are sbatch arguments, not #SBATCH lines
  assert submit[0] == 'sbatch' and submit[-1] == f'{sweep_dir}/sweep.sbatch'
  assert {'--array=0-1', '--nodes=2', '--ntasks-per-node=4'} <= set(submit)
  assert script.startswith('#!/bin/bash') and '#SBATCH' not in script
  assert 'srun .venv/bin/python main.py --multihost "${TRIAL[@]}"' in script
  assert script.count('; TRIAL=(') == 2
  bash = subprocess.run(['bash', '-n'], input=script, text=True, capture_output=True)
  assert bash.returncode == 0, bash.stderr
  assert not os.path.exists(os.path.join(sweep_dir, 'sweep.json'))  # a dry run writes nothing


@pytest.mark.parametrize('args, message', [
    (['--backend=gce'], "invalid choice: 'gce'"),
    (['--backend=tpu'], 'needs --tpu='),
    (['--backend=slurm'], 'sbatch is not on PATH'),
    (['--parallel=0'], '--parallel=0 must be at least 1'),
])
def test_bad_backend_settings_fail_with_one_line(tmp_path, args, message):
  sweep_file = tmp_path / 'lr.py'
  sweep_file.write_text(SWEEP_FILE % 50)
  result = launch_sweep(sweep_file, str(tmp_path / 'sweep'), *args)
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith('error:')
  assert message in result.stderr and 'Traceback' not in result.stderr


def test_empty_space_fails_with_one_line(tmp_path):
  sweep_file = tmp_path / 'empty.py'
  sweep_file.write_text('def get_sweep(config):\n  return dict(space={})\n')
  result = launch_sweep(sweep_file, str(tmp_path / 'sweep'))
  assert result.returncode == 2 and 'error: the search space is empty' in result.stderr


def test_sweep_file_errors_are_one_line(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'launch.sweep', f'--config={LP}', '--dry_run',
                           '--sweep=launch/sweeps/width_transfer_damping.py', f'--sweep_dir={tmp_path}/sweep'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert "the damping sweep is for kfac, shampoo, not 'adam'" in result.stderr


def test_a_trial_running_elsewhere_is_reported_and_not_started(tmp_path):
  sweep_file, sweep_dir = tmp_path / 'lr.py', str(tmp_path / 'sweep')
  sweep_file.write_text(SWEEP_FILE % 50)
  busy, free = (os.path.join(sweep_dir, f'learning_rate={lr},seed=0') for lr in (0.02, 0.03))
  assert trial_status.lock_holder(busy) is None
  with workdirs.WorkdirLock(free):
    pass
  assert trial_status.lock_holder(free) is None  # released
  with workdirs.WorkdirLock(busy):
    assert trial_status.lock_holder(busy) == (os.getpid(), socket.gethostname())
    with pytest.raises(ConfigError, match='is in use by pid'):  # the probe left the lock with its run
      workdirs.WorkdirLock(busy)
    result = launch_sweep(sweep_file, sweep_dir, '--dry_run')
  assert result.returncode == 0, result.stderr
  assert f'learning_rate=0.02,seed=0 is running (pid {os.getpid()} on host {socket.gethostname()})' in result.stdout
  assert '3 trials, 0 already finished, 1 running elsewhere, 2 to run' in result.stdout
  commands = [line for line in result.stdout.splitlines() if 'main.py' in line]
  assert len(commands) == 2 and not any('learning_rate=0.02' in c for c in commands)


def test_a_trial_refused_for_the_lock_is_running_not_failed(tmp_path):
  workdir = str(tmp_path / 'trial')
  with workdirs.WorkdirLock(workdir):  # another launcher's run: main.py exits 2 without touching it
    assert trial_status.ended(workdir, 2, 'trial.log') == 'running'
    assert trial_status.failure(workdir) == {}
  assert trial_status.ended(workdir, 2, 'trial.log') == 'failed'
  assert trial_status.failure(workdir) == {'exit_code': 2, 'log': 'trial.log'}
  trial_status.clear_failure(workdir)
  assert trial_status.status(workdir) == 'pending'
