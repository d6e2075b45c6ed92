"""Every cheap `:tiny` config reaches its own target as committed; launch.tiny_targets tabulates any."""

import json
import os

import jax
import pytest

import trainer
from conftest import load_config
from launch import report, tiny_targets

# lp_regression_sgd reaches its target in the tool's test below.
CHEAP = [name for name in report.CONFIGS if name.startswith('lp_regression_') and name != 'lp_regression_sgd']


@pytest.mark.parametrize('name', CHEAP)
def test_cheap_tiny_config_reaches_its_target(tmp_path, name):
  summary = trainer.run(load_config(name, stop_at_target=True), str(tmp_path / 'run'), name,
                        devices=jax.devices()[:1])
  assert summary['status'] == 'reached_target', summary.get('final_eval')


def test_the_tool_runs_a_config_as_committed_and_tabulates_its_seeds(tmp_path, capsys):
  root = str(tmp_path / 'tiny')
  assert tiny_targets.main(['--configs=lp_regression_sgd', f'--root={root}', '--seeds=1', '--parallel=1']) == 0
  row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('| lp_regression_sgd'))
  assert '| 400 | eval loss below 0.006 |' in row and '| 1/1 |' in row
  with open(os.path.join(root, tiny_targets.TABLE_FILE)) as f:
    assert row in f.read()

  # The same run, had it missed: the table says so and the tool exits 1 (the finished trial is not rerun).
  summary_path = next(os.path.join(d, 'summary.json') for d, _, files in os.walk(os.path.join(root, 'lp_regression_sgd'))
                      if 'summary.json' in files)
  with open(summary_path) as f:
    summary = json.load(f)
  summary.update(status='completed', steps_to_target=None)
  with open(summary_path, 'w') as f:
    json.dump(summary, f)
  assert tiny_targets.main(['--configs=lp_regression_sgd', f'--root={root}', '--seeds=1']) == 1
  assert '| — | 0/1 |' in capsys.readouterr().out

  # A run of a former setting (here its schedule) would count as a seed of the committed config: refused.
  config_path = os.path.join(os.path.dirname(summary_path), 'config.json')
  with open(config_path) as f:
    config = json.load(f)
  config['schedule']['warmup_steps'] += 1
  with open(config_path, 'w') as f:
    json.dump(config, f)
  assert tiny_targets.main(['--configs=lp_regression_sgd', f'--root={root}', '--seeds=1']) == 2
  assert capsys.readouterr().err == (
      f'error: {os.path.dirname(summary_path)} (schedule) ran a former setting of lp_regression_sgd; '
      f'remove {root}/lp_regression_sgd to measure the committed one\n')


def test_an_unknown_config_is_one_line_and_exit_2(tmp_path, capsys):
  assert tiny_targets.main(['--configs=lp_regression_nothing', f'--root={tmp_path}']) == 2
  assert capsys.readouterr().err.startswith("error: unknown config 'lp_regression_nothing'")
