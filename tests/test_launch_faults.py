"""launch/ under faults: hostile flag values never reach a shell unquoted, a remote non-zero exit is a
failed trial with its log kept, and a killed launcher leaves no trial process behind.

The trials run a stand-in for the interpreter (FAKE_PYTHON) instead of main.py, and gcloud, sbatch and
srun are stand-ins on PATH that run what the real ones would hand to a shell, so each test takes
seconds and needs no TPU or Slurm.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from launch import trial_status

SWEEP_FILE = '''
from launch import space

def get_sweep(config):
  return dict(space={'optimizer.learning_rate': space.grid(0.01, 0.02, 0.03, 0.04)}, seeds=[0])
'''
IDS = [f'learning_rate={lr},seed=0' for lr in (0.01, 0.02, 0.03, 0.04)]

FAKE_PYTHON = '''
"""The interpreter running main.py, faked: records its arguments, prints a line and ends as $FAKE_TRIAL
says for its trial: {"<trial id>": {"status": .., "exit": .., "sleep": .., "child": .., "ignore_term": ..}}."""
import json, os, signal, subprocess, sys, time

if sys.argv[1:2] == ['-m']:  # `python -m launch.trial_status` in the Slurm script: the real interpreter
  os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
workdir = next(arg.split('=', 1)[1] for arg in sys.argv if arg.startswith('--workdir='))
behaviour = json.loads(os.environ.get('FAKE_TRIAL', '{}')).get(os.path.basename(workdir), {})
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, 'argv.json'), 'w') as f:
  json.dump({'cwd': os.getcwd(), 'argv': sys.argv[1:]}, f)
print('fake trial output', flush=True)
if 'status' in behaviour:
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump({'status': behaviour['status']}, f)
if behaviour.get('sleep'):
  def stop(signum, frame):  # as main.py: notes the signal (it would checkpoint), exits 128 + its number
    with open(os.path.join(workdir, 'stopped_by'), 'w') as f:
      f.write(signal.Signals(signum).name)
    sys.exit(128 + signum)
  signal.signal(signal.SIGINT, stop)
  signal.signal(signal.SIGTERM, (lambda *_: None) if behaviour.get('ignore_term') else stop)
  pids = [os.getpid()] + ([subprocess.Popen(['sleep', '60']).pid] if behaviour.get('child') else [])
  with open(os.path.join(workdir, 'pids.tmp'), 'w') as f:
    json.dump(pids, f)
  os.replace(os.path.join(workdir, 'pids.tmp'), os.path.join(workdir, 'pids'))
  time.sleep(60)
sys.exit(behaviour.get('exit', 0))
'''

FAKE_GCLOUD = '''
"""gcloud, faked: records its arguments; `scp` copies to the path after `<tpu>:` (~ is $HOME), `ssh` has
bash run the --command text, as ssh has each worker's shell."""
import json, os, shutil, subprocess, sys
with open(os.environ['FAKE_CALLS'], 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\\n')
if sys.argv[4] == 'scp':
  shutil.copy(sys.argv[5], os.path.expanduser(sys.argv[6].split(':', 1)[1]))
  sys.exit(0)
command = next(arg[len('--command='):] for arg in sys.argv if arg.startswith('--command='))
sys.exit(subprocess.run(['bash', '-c', command]).returncode)
'''

FAKE_MAKE = '''
"""make, faked: records its arguments and where it ran."""
import json, os, sys
with open(os.environ['FAKE_CALLS'], 'a') as f:
  f.write(json.dumps({'make': sys.argv[1:], 'cwd': os.getcwd()}) + '\\n')
sys.exit(int(os.environ.get('FAKE_MAKE_EXIT', 0)))
'''

FAKE_SBATCH = '''
"""sbatch, faked: records its arguments and runs each array task of the script with bash, its output
in the --output file, as Slurm would (job id 7)."""
import json, os, re, subprocess, sys
with open(os.environ['FAKE_CALLS'], 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\\n')
options = dict(arg[2:].split('=', 1) for arg in sys.argv[1:-1])
for task in range(int(options['array'].split('-')[1]) + 1):
  log = re.sub('%([%Aa])', lambda m: {'%': '%', 'A': '7', 'a': str(task)}[m.group(1)], options['output'])
  with open(log, 'w') as f:
    subprocess.run(['bash', sys.argv[-1]], stdout=f, stderr=subprocess.STDOUT,
                   env={**os.environ, 'SLURM_ARRAY_JOB_ID': '7', 'SLURM_ARRAY_TASK_ID': str(task)})
'''

# The launcher with the interpreter of its local trials replaced by argv[1]; the rest is launch.sweep's.
LOCAL_HARNESS = '''
import sys
from launch import backends, sweep
command = backends.Local.command
backends.Local.command = lambda self, trial: [sys.argv[1], *command(self, trial)[1:]]
sys.exit(sweep.main(sys.argv[2:]))
'''


def program(path, source: str) -> str:
  """An executable file at `path` running `source` with this interpreter."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(source if source.startswith('#!') else f'#!{sys.executable}\n{source}')
  os.chmod(path, 0o755)
  return str(path)


def hostile(markers) -> str:
  """Text that creates a file in `markers` wherever a shell reads it unquoted or double-quoted."""
  return f"x'\n; touch {markers}/semicolon; $(touch {markers}/dollar) `touch {markers}/backtick` %"


@pytest.fixture
def fakes(tmp_path):
  """PATH with fake gcloud, sbatch and srun; FAKE_CALLS, the file their arguments are recorded in."""
  bin_dir = tmp_path / 'fake-bin'
  program(bin_dir / 'gcloud', FAKE_GCLOUD)
  program(bin_dir / 'sbatch', FAKE_SBATCH)
  program(bin_dir / 'srun', '#!/bin/sh\nexec "$@"\n')
  program(bin_dir / 'make', FAKE_MAKE)
  calls = tmp_path / 'calls.jsonl'
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', FAKE_CALLS=str(calls))
  return env, calls


def launch(args, env, harness_python=None):
  """launch.sweep (through LOCAL_HARNESS when `harness_python` is given), run to its end."""
  prefix = ['-c', LOCAL_HARNESS, harness_python] if harness_python else ['-m', 'launch.sweep']
  return subprocess.run([sys.executable, *prefix, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)


def calls(path) -> list[list[str]]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def index(sweep_dir) -> dict:
  with open(os.path.join(sweep_dir, 'sweep.json')) as f:
    return {entry['id']: entry for entry in json.load(f)['trials']}


def trial_argv(sweep_dir, trial_id) -> dict:
  with open(os.path.join(sweep_dir, trial_id, 'argv.json')) as f:
    return json.load(f)


@pytest.fixture
def hostile_setup(tmp_path):
  """(payload, markers dir, config spec, sweep file, sweep dir, fake python): the config, the sweep dir
  and the interpreter at paths holding the payload."""
  markers = tmp_path / 'markers'
  markers.mkdir()
  payload = hostile(markers)
  config = tmp_path / f'config{payload}' / 'lp.py'
  os.makedirs(config.parent)
  shutil.copy(os.path.join(ROOT, 'configs', 'lp_regression_adam.py'), config)
  sweep_file = tmp_path / 'lr.py'
  sweep_file.write_text(SWEEP_FILE)
  python = program(tmp_path / f'bin{payload}' / 'python', FAKE_PYTHON)
  return payload, markers, f'{config}:tiny', str(sweep_file), str(tmp_path / f'sweep{payload}'), python


def expected_main_args(config, sweep_dir, payload, trial_id, learning_rate):
  return [f'--config={config}', f'--workdir={sweep_dir}/{trial_id}', f'--config.parameterization={payload}',
          f'--config.optimizer.learning_rate={learning_rate}', '--config.seed=0']


def test_tpu_flags_reach_gcloud_as_argv_and_the_workers_shell_quoted(tmp_path, fakes, hostile_setup):
  env, calls_file = fakes
  payload, markers, config, sweep_file, sweep_dir, python = hostile_setup
  remote = tmp_path / 'home' / f'checkout{payload}'
  os.makedirs(remote)
  result = launch([f'--config={config}', f'--sweep={sweep_file}', f'--sweep_dir={sweep_dir}', '--backend=tpu',
                   f'--tpu=pod{payload}', f'--zone=zone{payload}', f'--project=project{payload}',
                   f'--remote_dir=~/checkout{payload}', f'--python={python}', f'--set=parameterization={payload}'],
                  dict(env, HOME=str(tmp_path / 'home')))
  assert result.returncode == 0, result.stdout + result.stderr
  assert os.listdir(markers) == []
  copy, install, make, *recorded = calls(calls_file)
  # The setup: this checkout's files go to every worker, unpacked into the checkout there, then its .venv.
  assert copy == ['compute', 'tpus', 'tpu-vm', 'scp', f'{sweep_dir}/code.tar.gz', f'pod{payload}:~/shampoo-bench-code.tar.gz',
                  f'--zone=zone{payload}', f'--project=project{payload}', '--worker=all']
  assert make == {'make': ['install', 'ACCEL=tpu', 'PYTHON=python3'], 'cwd': str(remote)}
  assert os.path.getmtime(remote / 'main.py') == os.path.getmtime(os.path.join(ROOT, 'main.py'))  # an unchanged lock reinstalls nothing
  assert len(recorded) == 4
  assert all(call[:8] == ['compute', 'tpus', 'tpu-vm', 'ssh', f'pod{payload}', f'--zone=zone{payload}',
                          f'--project=project{payload}', '--worker=all'] for call in [install, *recorded])
  for trial_id, learning_rate in zip(IDS, (0.01, 0.02, 0.03, 0.04)):
    seen = trial_argv(sweep_dir, trial_id)
    assert seen['cwd'] == str(remote)  # ~ expanded by the remote shell, the rest of the path quoted
    assert seen['argv'] == ['main.py', '--multihost',
                            *expected_main_args(config, sweep_dir, payload, trial_id, learning_rate)]


def test_slurm_flags_reach_sbatch_as_argv_and_the_script_quoted(fakes, hostile_setup):
  env, calls_file = fakes
  payload, markers, config, sweep_file, sweep_dir, python = hostile_setup
  result = launch([f'--config={config}', f'--sweep={sweep_file}', f'--sweep_dir={sweep_dir}', '--backend=slurm',
                   f'--partition=part{payload}', f'--account=acct{payload}', f'--time=1:00:00{payload}',
                   f'--python={python}', f'--set=parameterization={payload}'], env)
  assert result.returncode == 0, result.stdout + result.stderr
  assert os.listdir(markers) == []
  [call] = calls(calls_file)
  assert call == [f'--job-name=sweep-{os.path.basename(sweep_dir)}', '--nodes=1', '--ntasks-per-node=8',
                  '--gpus-per-task=1', f'--time=1:00:00{payload}', '--array=0-3',
                  f'--output={sweep_dir.replace("%", "%%")}/logs/slurm-%A_%a.log', f'--partition=part{payload}',
                  f'--account=acct{payload}', f'{sweep_dir}/sweep.sbatch']
  for task, (trial_id, learning_rate) in enumerate(zip(IDS, (0.01, 0.02, 0.03, 0.04))):
    seen = trial_argv(sweep_dir, trial_id)
    assert seen == {'cwd': ROOT, 'argv': ['main.py', '--multihost', *expected_main_args(
        config, sweep_dir, payload, trial_id, learning_rate)]}
    with open(f'{sweep_dir}/logs/slurm-7_{task}.log') as f:
      assert f'fake trial output\ntrial {trial_id}: exit 0, pending\n' == f.read()


def test_local_flags_reach_the_trial_as_argv(fakes, hostile_setup):
  env, _ = fakes
  payload, markers, config, sweep_file, sweep_dir, python = hostile_setup
  result = launch([f'--config={config}', f'--sweep={sweep_file}', f'--sweep_dir={sweep_dir}',
                   f'--set=parameterization={payload}'], env, harness_python=python)
  assert result.returncode == 0, result.stdout + result.stderr
  assert os.listdir(markers) == []
  for trial_id, learning_rate in zip(IDS, (0.01, 0.02, 0.03, 0.04)):
    assert trial_argv(sweep_dir, trial_id) == {'cwd': ROOT, 'argv': [
        os.path.join(ROOT, 'main.py'), *expected_main_args(config, sweep_dir, payload, trial_id, learning_rate)]}


# Per trial: no summary and exit 3 (main.py's code for a divergence, here without one); no summary and
# exit 1 (a crash, or gcloud's own failure); a completed summary and exit 255 (ssh lost a worker); a
# diverged summary and exit 3.
REMOTE_ENDINGS = {IDS[0]: {'exit': 3}, IDS[1]: {'exit': 1}, IDS[2]: {'status': 'completed', 'exit': 255},
                  IDS[3]: {'status': 'diverged', 'exit': 3}}
REMOTE_STATUSES = ['failed', 'failed', 'failed', 'diverged']


def sweep_args(tmp_path, *args) -> list[str]:
  sweep_file = tmp_path / 'lr.py'
  sweep_file.write_text(SWEEP_FILE)
  return ['--config=configs/lp_regression_adam.py:tiny', f'--sweep={sweep_file}',
          f'--sweep_dir={tmp_path / "sweep"}', *args]


def test_a_failed_tpu_command_is_a_failed_trial_with_its_log_and_runs_again(tmp_path, fakes):
  env, _ = fakes
  python = program(tmp_path / 'bin' / 'python', FAKE_PYTHON)
  sweep_dir = str(tmp_path / 'sweep')
  args = sweep_args(tmp_path, '--backend=tpu', '--tpu=pod', '--zone=z', f'--remote_dir={tmp_path}',
                    f'--python={python}', '--no_setup')
  result = launch(args, dict(env, FAKE_TRIAL=json.dumps(REMOTE_ENDINGS)))
  assert result.returncode == 1, result.stdout + result.stderr
  entries = index(sweep_dir)
  assert [entries[trial_id]['status'] for trial_id in IDS] == REMOTE_STATUSES
  for trial_id, code in zip(IDS[:3], (3, 1, 255)):
    log = f'{sweep_dir}/logs/{trial_id}.log'
    assert entries[trial_id]['exit_code'] == code and entries[trial_id]['log'] == log
    assert f'finished {trial_id}: failed' in result.stdout and f'(exit {code}; log {log})' in result.stdout
    with open(log) as f:
      assert f.read().splitlines()[1:] == ['fake trial output']  # after the command line
  assert 'exit_code' not in entries[IDS[3]]

  again = launch([*args, '--dry_run'], env)  # the completed summary under exit 255 is not a result
  assert '4 trials, 1 already finished, 3 to run' in again.stdout, again.stdout + again.stderr
  fixed = launch(args, dict(env, FAKE_TRIAL=json.dumps({i: {'status': 'completed'} for i in IDS[:3]})))
  assert fixed.returncode == 0, fixed.stdout + fixed.stderr
  entries = index(sweep_dir)
  assert [entries[i]['status'] for i in IDS] == ['completed'] * 3 + ['diverged']
  assert not any('exit_code' in entry or 'log' in entry for entry in entries.values())
  assert not any(os.path.exists(f'{sweep_dir}/{i}/{trial_status.FAILED_FILE}') for i in IDS)


def test_a_failed_tpu_setup_starts_no_trial_and_keeps_its_log(tmp_path, fakes):
  env, calls_file = fakes
  args = sweep_args(tmp_path, '--backend=tpu', '--tpu=pod', '--zone=z', f'--remote_dir={tmp_path / "checkout"}')
  result = launch(args, dict(env, FAKE_MAKE_EXIT='2'))
  log = f'{tmp_path}/sweep/logs/setup.log'
  assert result.returncode == 1 and f'setup on the workers failed (exit 2); log {log}; no trial started' in result.stdout
  assert len(calls(calls_file)) == 3  # scp, the setup's ssh and make: no trial's ssh
  assert all(entry['status'] == 'pending' for entry in index(f'{tmp_path}/sweep').values())


def test_a_failed_slurm_task_is_a_failed_trial_with_its_log(tmp_path, fakes):
  env, _ = fakes
  python = program(tmp_path / 'bin' / 'python', FAKE_PYTHON)
  sweep_dir = str(tmp_path / 'sweep')
  args = sweep_args(tmp_path, '--backend=slurm', f'--python={python}')
  result = launch(args, dict(env, FAKE_TRIAL=json.dumps(REMOTE_ENDINGS)))
  assert result.returncode == 0, result.stdout + result.stderr  # submitted
  assert [trial_status.status(f'{sweep_dir}/{i}') for i in IDS] == REMOTE_STATUSES
  for task, (trial_id, code) in enumerate(zip(IDS[:3], (3, 1, 255))):
    log = f'{sweep_dir}/logs/slurm-7_{task}.log'
    assert trial_status.failure(f'{sweep_dir}/{trial_id}') == {'exit_code': code, 'log': log}
    with open(log) as f:
      assert f.read() == f'fake trial output\ntrial {trial_id}: exit {code}, failed\n'
  again = launch([*args, '--dry_run'], env)
  assert '4 trials, 1 already finished, 3 to run' in again.stdout, again.stdout + again.stderr
  assert again.stdout.count('0) WORKDIR=') == 1 and f'rm -f "$WORKDIR"/{trial_status.FAILED_FILE}' in again.stdout


def alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


@pytest.mark.parametrize('how', ['SIGTERM', 'SIGINT', 'SIGKILL', 'SIGTERM twice'])
def test_a_killed_launcher_leaves_no_trial_process(tmp_path, how):
  """The trial sleeps; with `child` it has a process of its own, which only its group's signal reaches."""
  python = program(tmp_path / 'bin' / 'python', FAKE_PYTHON)
  sweep_dir = str(tmp_path / 'sweep')
  behaviour = {'sleep': True, 'child': how != 'SIGKILL', 'ignore_term': how == 'SIGTERM twice'}
  env = dict(os.environ, FAKE_TRIAL=json.dumps({IDS[0]: behaviour}))
  launcher = subprocess.Popen([sys.executable, '-c', LOCAL_HARNESS, python, *sweep_args(tmp_path)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  pids, pids_file = [], f'{sweep_dir}/{IDS[0]}/pids'
  try:
    deadline = time.monotonic() + 60
    while not os.path.exists(pids_file):
      assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()[0]
      time.sleep(0.05)
    with open(pids_file) as f:
      pids = json.load(f)
    launcher.send_signal(getattr(signal, how.split()[0]))
    if how == 'SIGTERM twice':
      time.sleep(1)
      assert alive(pids[0])  # it ignores SIGTERM: the launcher waits for it
      launcher.send_signal(signal.SIGTERM)
    output = launcher.communicate(timeout=10)[0]
    deadline = time.monotonic() + 5
    while any(map(alive, pids)) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not any(map(alive, pids)), (how, pids, output)
  finally:
    for pid in [launcher.pid, *pids]:
      if alive(pid):
        os.kill(pid, signal.SIGKILL)
  stopped_by = f'{sweep_dir}/{IDS[0]}/stopped_by'
  if how == 'SIGKILL':  # the kernel's parent-death signal: the trial could checkpoint
    assert launcher.returncode == -signal.SIGKILL
    with open(stopped_by) as f:
      assert f.read() == 'SIGTERM'
    return
  signum = signal.SIGINT if how == 'SIGINT' else signal.SIGTERM
  assert launcher.returncode == 128 + signum and 'run it again to resume' in output, output
  if how == 'SIGTERM twice':
    assert not os.path.exists(stopped_by)  # killed by the second signal
  else:
    with open(stopped_by) as f:
      assert f.read() == signum.name
  assert [index(sweep_dir)[i]['status'] for i in IDS] == ['interrupted', 'pending', 'pending', 'pending']
