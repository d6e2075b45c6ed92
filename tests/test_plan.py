"""The planner (`main.py --dry_run`): tiny configs planned on the 8 simulated CPU devices."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, load_config, subprocess_env
from errors import ConfigError
from launch import plans as plans_launcher
from results import scale
from trainer import hardware, plan as planner

PLAN_FIELDS = ('config', 'hardware', 'devices', 'mesh', 'params', 'param_bytes', 'optimizer_state_bytes',
               'per_device', 'device_memory_bytes', 'fits', 'flops_per_step', 'estimated', 'shampoo')
HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None


def _main(*args, devices: int = 8):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
                        capture_output=True, text=True, env=subprocess_env(devices), timeout=600)


def test_dry_run_writes_only_the_plan_and_reads_no_data(tmp_path):
  workdir, data_dir = tmp_path / 'plan', tmp_path / 'no-data'
  result = _main('--config=configs/bert_shampoo.py:tiny', '--dry_run', f'--workdir={workdir}',
                 f'--config.data_dir={data_dir}', '--config.mesh.data=4', '--config.mesh.model=2')
  assert result.returncode == 0, result.stderr
  assert os.listdir(workdir) == ['plan.json']
  assert not data_dir.exists()  # generate=True in tiny, but a plan needs no data
  plan = json.loads((workdir / 'plan.json').read_text())
  assert set(PLAN_FIELDS) <= set(plan)
  assert plan['fits'] and plan['verdict'] in result.stdout.splitlines()[-1]
  assert plan['devices'] == 8 and plan['mesh'] == {'data': 4, 'model': 2} and not plan['estimated']
  per_device = plan['per_device']
  assert per_device['total_bytes'] == (per_device['argument_bytes'] + per_device['output_bytes']
                                       - per_device['alias_bytes'] + per_device['temp_bytes'])
  # Sharded: a device holds less than the whole state, whose stacks are padded to 8 blocks a stack.
  assert plan['state_bytes_per_device'] < plan['param_bytes'] + plan['optimizer_state_bytes']
  shampoo = plan['shampoo']
  assert all(count % 8 == 0 for count in shampoo['stacks'].values())
  assert shampoo['blocks'] + shampoo['padded_blocks'] == sum(shampoo['stacks'].values())
  assert plan['flops_per_step'] > 0 and shampoo['root_flops'] > 0


@pytest.mark.parametrize('name', ['transformer_adam', 'dlrm_adagrad', 'resnet50_kfac', 'lp_regression_sgd'])
def test_every_task_plans_without_its_data(name, tmp_path):
  batch = {'eval_batch_size': 256} if name.startswith('resnet50') else {}  # 250 does not split 8 ways
  config = load_config(name, data_dir=str(tmp_path / 'no-data'), **batch)
  plan = planner.make_plan(config, name)
  assert plan['fits'] and plan['params'] > 0 and plan['per_device']['total_bytes'] > 0
  assert plan['eval_per_device']['total_bytes'] > 0
  assert not (tmp_path / 'no-data').exists()


def test_a_config_that_does_not_fit_exits_3_with_the_verdict(tmp_path):
  # A 100k x 100k hidden layer: 37 GiB of float32 weights, more than this machine's share per device.
  result = _main('--config=configs/lp_regression_adam.py:tiny', '--dry_run', f'--workdir={tmp_path}',
                 '--config.task.depth=3', '--config.task.width=100000')
  assert result.returncode == 3, result.stderr
  assert result.stderr.startswith('error: does not fit cpu:') and len(result.stderr.splitlines()) == 1
  assert not json.loads((tmp_path / 'plan.json').read_text())['fits']


def test_unknown_hardware_is_one_line_listing_the_known(tmp_path):
  result = _main('--config=configs/lp_regression_adam.py:tiny', '--dry_run', f'--workdir={tmp_path}',
                 '--config.hardware=tpu_v9_1')
  assert result.returncode == 2
  assert result.stderr.startswith("error: unknown hardware 'tpu_v9_1': choose one of ")
  assert 'tpu_v3_256' in result.stderr and len(result.stderr.splitlines()) == 1
  assert not os.listdir(tmp_path)


def test_a_gpu_plan_is_estimated_on_simulated_devices():
  plan = planner.make_plan(load_config('transformer_shampoo', hardware='gpu_a100_8'), 'transformer_shampoo')
  assert plan['estimated'] and plan['devices'] == 8 and plan['hardware'] == 'gpu_a100_8'
  assert plan['device_memory_bytes'] == hardware.get('gpu_a100_8').device_memory_bytes


def test_a_tpu_plan_without_libtpu_says_how_to_install_it(monkeypatch):
  from jax.experimental import topologies

  def missing(**_):
    raise RuntimeError('Unable to initialize backend tpu')
  monkeypatch.setattr(topologies, 'get_topology_desc', missing)
  with pytest.raises(ConfigError, match=r'needs libtpu: `make plans` installs it'):
    planner.target_devices(hardware.get('tpu_v3_8'))


@pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu is not installed (`make plans` installs it)')
def test_a_tpu_plan_compiles_for_the_slice_itself(tmp_path):
  result = _main('--config=configs/lp_regression_shampoo.py:tiny', '--dry_run', f'--workdir={tmp_path}',
                 '--config.hardware=tpu_v3_8')
  assert result.returncode == 0, result.stderr
  plan = json.loads((tmp_path / 'plan.json').read_text())
  assert plan['platform'] == 'tpu' and plan['devices'] == 8 and not plan['estimated']
  assert plan['device_memory_bytes'] == hardware.get('tpu_v3_8').device_memory_bytes


def test_the_scale_page_has_a_row_and_a_verdict_per_plan(tmp_path):
  plan = planner.make_plan(load_config('lp_regression_shampoo'), 'lp_regression_shampoo')
  (tmp_path / 'lp_regression_shampoo').mkdir()
  (tmp_path / 'lp_regression_shampoo' / 'plan.json').write_text(json.dumps(plan))
  page = scale.markdown(str(tmp_path), ['lp_regression_shampoo', 'missing'], 'python -m launch.plans')
  assert '| lp_regression_shampoo | cpu |' in page
  assert f'- lp_regression_shampoo: {plan["verdict"]}' in page
  assert '| missing | no plan' in page and '## Shampoo' in page
  prose = '# Planning\n\nHow to read the tables.\n'
  written = scale.with_tables(prose, page)
  assert written.startswith(prose) and written.endswith(page)
  assert scale.with_tables(written, 'new tables\n') == f'{prose}\n{scale.MARKER}\n\nnew tables\n'


def test_the_plans_launcher_refuses_an_unknown_config(capsys):
  with pytest.raises(SystemExit) as exit_info:
    plans_launcher.main(['--configs=bert_shampoo,nope'])
  assert exit_info.value.code == 2
  assert 'unknown configs nope' in capsys.readouterr().err


def test_the_plans_launcher_stops_a_planner_at_its_timeout_and_says_so(tmp_path, capsys):
  """Half a second is less than the planner's start-up: it is stopped, its log says why, the page
  shows the config unplanned, and a re-run plans it again (no plan.json was written)."""
  out = tmp_path / 'scale.md'
  assert plans_launcher.main(['--configs=bert_adam', f'--root={tmp_path}', '--timeout=0.5', f'--out={out}']) == 1
  assert 'bert_adam: planner failed (exit 124)' in capsys.readouterr().out
  assert (tmp_path / 'bert_adam' / 'plan.log').read_text().endswith('planner timed out after 0.5 s\n')
  assert not (tmp_path / 'bert_adam' / 'plan.json').exists() and '| bert_adam | no plan' in out.read_text()
  with pytest.raises(SystemExit) as exit_info:
    plans_launcher.main(['--configs=bert_adam', '--timeout=0'])
  assert exit_info.value.code == 2 and '--timeout=0 must be > 0' in capsys.readouterr().err
