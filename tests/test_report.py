"""The reproduction report: launch/report.py's two-stage sweeps and results/report.py's REPORT.md."""

import json
import os

import pytest

from launch import report
from results import report as report_md

CONFIG = 'lp_regression_adam'
SETTINGS = ['num_steps=40', 'eval_every=10', 'log_every=10', 'checkpoint_every=1000', "target=('loss', 0.05, 'below')"]


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('report'))
  assert report.main([f'--configs={CONFIG}', f'--root={root}', '--parallel=1', *(f'--set={s}' for s in SETTINGS)]) == 0
  return root


def test_lr_sweep_then_three_seeds_of_its_best_rate_and_resume(root, capsys):
  with open(os.path.join(root, CONFIG, 'sweep.json')) as f:
    index = json.load(f)
  trials = {entry['id']: entry for entry in index['trials']}
  assert len(trials) == 7 and {entry['status'] for entry in trials.values()} <= {'completed', 'reached_target'}
  best = report.best_learning_rate(os.path.join(root, CONFIG))
  seeds = {entry['overrides']['seed'] for entry in trials.values()
           if entry['overrides']['optimizer.learning_rate'] == best}
  assert seeds == {0, 1, 2}
  assert index['set'] == {'num_steps': 40, 'eval_every': 10, 'log_every': 10, 'checkpoint_every': 1000,
                          'target': ['loss', 0.05, 'below']}

  assert report.main([f'--configs={CONFIG}', f'--root={root}', *(f'--set={s}' for s in SETTINGS)]) == 0
  again = capsys.readouterr().out
  assert f'best learning rate {best}' in again
  assert '5 trials, 5 already finished, 0 to run' in again and '3 trials, 3 already finished, 0 to run' in again
  with open(os.path.join(root, report_md.TIMING_FILE)) as f:
    lines = [json.loads(line) for line in f]
  assert [line['config'] for line in lines] == [CONFIG, CONFIG] and lines[0]['seconds'] > lines[1]['seconds']


def test_report_md_from_the_sweeps(root, tmp_path):
  cost = tmp_path / 'cost_cpu.md'
  cost.write_text('device cpu\n\n## Step time\n\n| optimizer | ms / step |\n|---|---|\n| adam | 1.0 |\n')
  discussion = tmp_path / 'discussion.md'
  discussion.write_text('## Discussion\n\nAdam alone here.\n')
  out = tmp_path / 'REPORT.md'
  assert report_md.main([root, f'--out={out}', f'--figures={tmp_path}/figures', f'--cost={cost}',
                         f'--discussion={discussion}']) == 0
  text = out.read_text()
  with open(os.path.join(root, CONFIG, 'sweep.json')) as f:
    trials = json.load(f)['trials']
  assert f'from {len(trials)} runs in 1 sweeps' in text
  best = report.best_learning_rate(os.path.join(root, CONFIG))
  steps = [t['steps_to_target'] for t in trials if t['overrides']['optimizer.learning_rate'] == best]
  assert len(steps) == 3 and None not in steps  # the target (a loss of 0.05) is within 40 steps
  assert '| lp_regression | 1.00 (1.00) |' in text
  seed0 = next(t for t in trials if t['id'] == f'learning_rate={best},seed=0')
  assert f'**{best}: {seed0["steps_to_target"]} / ' in text  # the chosen rate in the sweep table
  assert '### lp_regression' in text and '![lp_regression curves](figures/lp_regression_curves.png)' in text
  assert '### Step time' in text and text.rstrip().endswith('Adam alone here.')
  assert os.path.getsize(tmp_path / 'figures' / 'performance_profile_steps.png') > 10_000
  assert report_md.main([str(tmp_path / 'missing'), f'--out={out}', '--figures=x']) == 2


def test_unknown_config_is_one_line(capsys):
  assert report.main(['--configs=lp_regression_adamw']) == 2
  assert "unknown config 'lp_regression_adamw'" in capsys.readouterr().err
