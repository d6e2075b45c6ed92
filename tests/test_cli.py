"""main.py as a user runs it: exit codes, one-line errors, outputs, SIGTERM and resume."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

ADAM = os.path.join(ROOT, 'configs', 'lp_regression_adam.py')


def main(*args, cwd=ROOT, **kwargs):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300, **kwargs)


def errors(result):
  """stderr lines that are ours."""
  return [line for line in result.stderr.splitlines() if line.startswith('error:')]


def tree_digest(path):
  digest = {}
  for folder, _, files in os.walk(path):
    for name in files:
      full = os.path.join(folder, name)
      with open(full, 'rb') as f:
        digest[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return digest


def test_tiny_run_with_default_workdir_and_overrides(tmp_path):
  result = main(f'--config={ADAM}:tiny', '--config.num_steps=60', '--config.optimizer.learning_rate=0.02',
                cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  workdir = tmp_path / 'runs' / 'lp_regression_adam-tiny'
  summary = json.loads((workdir / 'summary.json').read_text())
  config = json.loads((workdir / 'config.json').read_text())
  assert summary['status'] == 'completed' and summary['step'] == 60 and summary['size'] == 'tiny'
  assert config['optimizer']['learning_rate'] == 0.02 and config['num_steps'] == 60
  assert 'step 50/60' in result.stdout and 'steps/s' in result.stdout and 'ETA' in result.stdout
  assert 'lp_regression_adam-tiny: completed at step 60' in result.stdout


@pytest.mark.parametrize('args,message', [
    (['--config=configs/nope.py:tiny'], 'config file configs/nope.py does not exist'),
    ([f'--config={ADAM}:huge'], "unknown size 'huge'"),
    ([f'--config={ADAM}:tiny', '--config.optimizer.foo=1'], 'unknown config key --config.optimizer.foo'),
    ([f'--config={ADAM}:tiny', '--config.num_steps=abc'], 'num_steps'),
    ([f'--config={ADAM}:tiny', '--config.optimizer.name=lion'], "unknown optimizer 'lion'"),
    ([f'--config={ADAM}:tiny', '--config.task.name=mnist'], "unknown task 'mnist'"),
    ([f'--config={ADAM}:tiny', '--config.mesh.model=3'], 'mesh'),
    ([f'--config={ADAM}:tiny', '--config.global_batch_size=100'], 'divisible'),
    ([f'--config={ADAM}:tiny', 'stray'], 'unexpected arguments: stray'),
    ([], '--config is required'),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
  result = main(*args, f'--workdir={tmp_path / "run"}')
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.splitlines() == errors(result), result.stderr[-2000:]  # nothing but the error
  assert len(errors(result)) == 1 and message in errors(result)[0], result.stderr[-2000:]
  assert not (tmp_path / 'run').exists()


def test_bad_workdirs(tmp_path):
  afile = tmp_path / 'afile'
  afile.write_text('keep me')
  for workdir, message in [(afile, 'is not a directory'), (afile / 'sub', 'cannot create workdir'),
                           ('', '--workdir is empty')]:
    result = main(f'--config={ADAM}:tiny', f'--workdir={workdir}')
    assert result.returncode == 2 and result.stderr.splitlines() == errors(result), result.stderr[-2000:]
    assert len(errors(result)) == 1 and message in errors(result)[0], result.stderr[-2000:]
  assert afile.read_text() == 'keep me'


def test_paper_translation_without_the_data_says_how_to_get_it(tmp_path):
  config = os.path.join(ROOT, 'configs', 'transformer_adam.py')
  result = main(f'--config={config}', f'--config.data_dir={tmp_path / "empty"}',
                f'--workdir={tmp_path / "run"}')
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'tfds build wmt14_translate/fr-en' in errors(result)[0] and len(errors(result)) == 1
  assert 'Traceback' not in result.stderr and not (tmp_path / 'run').exists()


def test_existing_run_with_another_config_is_left_untouched(tmp_path):
  workdir = tmp_path / 'run'
  assert main(f'--config={ADAM}:tiny', '--config.num_steps=20', f'--workdir={workdir}').returncode == 0
  before = tree_digest(workdir)
  result = main(f'--config={ADAM}:tiny', '--config.num_steps=20', '--config.task.depth=2',
                f'--workdir={workdir}')
  assert result.returncode == 2 and 'task.depth' in errors(result)[0]
  assert tree_digest(workdir) == before


def test_sigterm_checkpoints_and_a_rerun_resumes(tmp_path):
  workdir = tmp_path / 'run'
  args = [f'--config={ADAM}:tiny', f'--workdir={workdir}', '--config.num_steps=1000000',
          '--config.log_every=100', '--config.eval_every=100000', '--config.checkpoint_every=100000']
  process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not (workdir / 'metrics.jsonl').exists() and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['status'] == 'interrupted' and summary['signal'] == 'SIGTERM'
  stopped = summary['step']
  assert 100 <= stopped < 1000000
  assert summary['last_checkpoint_step'] == stopped
  assert os.listdir(workdir / 'checkpoints') == [str(stopped)]

  args[2] = f'--config.num_steps={stopped + 50}'
  result = main(*args)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['status'] == 'completed' and summary['step'] == stopped + 50


def test_divergence_exits_3_with_one_line(tmp_path):
  sgd = os.path.join(ROOT, 'configs', 'lp_regression_sgd.py')
  result = main(f'--config={sgd}:tiny', '--config.optimizer.learning_rate=1.0', '--config.num_steps=50',
                f'--workdir={tmp_path / "run"}')
  assert result.returncode == 3
  assert len(errors(result)) == 1 and 'training diverged' in errors(result)[0]
  assert json.loads((tmp_path / 'run' / 'summary.json').read_text())['status'] == 'diverged'


@pytest.mark.parametrize('preset, expected', [(None, '1'), ('2', '2')])
def test_openblas_is_single_threaded_unless_the_user_says_otherwise(preset, expected):
  env = {key: value for key, value in os.environ.items() if key != 'OPENBLAS_NUM_THREADS'}
  if preset is not None:
    env['OPENBLAS_NUM_THREADS'] = preset
  # What the process's OpenBLAS (NumPy's, loaded after main.py's first lines) was told at start-up.
  probe = "import main, numpy, os; print(os.environ['OPENBLAS_NUM_THREADS'])"
  result = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [expected]
