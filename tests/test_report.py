"""The reproduction report: launch/report.py's staged sweeps and results/report.py's REPORT.md."""

import json
import os
import shutil

import pytest

from launch import report
from results import compare, report as report_md, runs as runs_lib

CONFIG = 'lp_regression_shampoo'  # a damped optimizer: all three stages
EPSILON = 'optimizer.matrix_epsilon'
LR = 'optimizer.learning_rate'
SETTINGS = ['num_steps=40', 'eval_every=10', 'log_every=10', 'checkpoint_every=1000', "target=('loss', 0.05, 'below')"]


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('report'))
  assert report.main([f'--configs={CONFIG}', f'--root={root}', '--parallel=2', *(f'--set={s}' for s in SETTINGS)]) == 0
  return root


def test_lr_then_damping_sweep_then_three_seeds_of_the_best_and_resume(root, capsys):
  index, trials = _index(root)
  assert len(trials) == 9 and {entry['status'] for entry in trials.values()} <= {'completed', 'reached_target'}
  lr_only = [entry for entry in trials.values() if set(entry['overrides']) == {LR, 'seed'}]
  damped = [entry for entry in trials.values() if EPSILON in entry['overrides']]
  assert len({entry['overrides'][LR] for entry in lr_only}) == 5
  best = report.best_setting(os.path.join(root, CONFIG))
  seed0 = {entry['overrides'][LR] for entry in lr_only if entry['overrides']['seed'] == 0}
  chosen_lr = min(seed0, key=lambda lr: _rank(trials, {LR: lr}))
  assert best[LR] == chosen_lr  # stage 1's rate, kept by stage 2 (dampings at that rate)
  assert {entry['overrides'][EPSILON] for entry in damped if entry['overrides']['seed'] == 0} == {1e-7, 1e-5}
  assert {entry['overrides'][LR] for entry in damped} == {chosen_lr}
  seeds = {entry['overrides']['seed'] for entry in trials.values()
           if {k: v for k, v in entry['overrides'].items() if k != 'seed'} == best}
  assert seeds == {0, 1, 2}
  assert index['set'] == {'num_steps': 40, 'eval_every': 10, 'log_every': 10, 'checkpoint_every': 1000,
                          'target': ['loss', 0.05, 'below']}

  assert report.main([f'--configs={CONFIG}', f'--root={root}', *(f'--set={s}' for s in SETTINGS)]) == 0
  again = capsys.readouterr().out
  assert f'best setting {best}' in again
  assert '5 trials, 5 already finished, 0 to run' in again and '2 trials, 2 already finished, 0 to run' in again
  assert '3 trials, 3 already finished, 0 to run' in again
  with open(os.path.join(root, report_md.TIMING_FILE)) as f:
    lines = [json.loads(line) for line in f]
  assert [line['config'] for line in lines] == [CONFIG, CONFIG] and lines[0]['seconds'] > lines[1]['seconds']


def test_rate_stage_choice_ignores_damped_runs_on_resume(root, tmp_path):
  """On a re-run, stage 1 must choose among its own runs: a better damped run (from stage 2) would
  otherwise move stage 2's grid and start new trials."""
  sweep_dir = shutil.copytree(os.path.join(root, CONFIG), tmp_path / CONFIG)
  _, trials = _index(root)
  damped = next(t for t in trials.values() if EPSILON in t['overrides'] and t['overrides']['seed'] == 0)
  summary_path = sweep_dir / damped['workdir'] / 'summary.json'
  summary = json.loads(summary_path.read_text())
  summary.update(status='reached_target', steps_to_target=1)  # now the best seed-0 run of all
  summary_path.write_text(json.dumps(summary))
  rate_stage = {entry['overrides'][LR] for entry in trials.values() if set(entry['overrides']) == {LR, 'seed'}}
  assert report.best_setting(str(sweep_dir)) == {k: v for k, v in damped['overrides'].items() if k != 'seed'}
  assert report.best_setting(str(sweep_dir), {LR}) == {LR: min(rate_stage, key=lambda lr: _rank(trials, {LR: lr}))}


def _index(root):
  """sweep.json, and its trials by id with their overrides less the fixed ones (seed and swept keys)."""
  with open(os.path.join(root, CONFIG, 'sweep.json')) as f:
    index = json.load(f)
  return index, {entry['id']: {**entry, 'overrides': {key: value for key, value in entry['overrides'].items()
                                                      if key not in index['fixed']}}
                 for entry in index['trials']}


def _rank(trials, setting):
  """results.compare's rule on one seed-0 trial's index entry: fewest steps, then lowest final loss."""
  entry = next(e for e in trials.values() if e['overrides'] == {**setting, 'seed': 0})
  return (entry['steps_to_target'] or float('inf'), entry['final_eval']['loss'])


def _run(lr, seed, steps):
  summary = {'target': {'metric': 'loss', 'value': 0.1, 'direction': 'below'}, 'steps_to_target': steps,
             'train_seconds_to_target': steps, 'final_eval': {'loss': 0.05}}
  return runs_lib.Run(workdir=f'w{lr}-{seed}', task='t', optimizer='o', name='t_o', config={}, summary=summary,
                      overrides={LR: lr, 'seed': seed}, sweep='s')


def test_choose_keeps_the_seed0_choice_against_a_lucky_one_seed_setting():
  chosen = [_run(0.1, 0, 100), _run(0.1, 1, 300), _run(0.1, 2, 300)]  # median 300
  lucky = [_run(0.3, 0, 200)]  # worse at seed 0, better than the chosen median
  best = report_md.choose(compare.settings(chosen + lucky))['t']['o']
  assert best.hyperparameters == {LR: 0.1} and len(best.runs) == 3
  assert compare.best_per_optimizer(compare.settings(chosen + lucky))['t']['o'].hyperparameters == {LR: 0.3}


def test_report_md_from_the_sweeps(root, tmp_path):
  cost = tmp_path / 'cost_cpu.md'
  cost.write_text('device cpu\n\n## Step time\n\n| optimizer | ms / step |\n|---|---|\n| adam | 1.0 |\n')
  discussion = tmp_path / 'discussion.md'
  discussion.write_text('## Discussion\n\nAdam alone here.\n')
  out = tmp_path / 'REPORT.md'
  assert report_md.main([root, f'--out={out}', f'--figures={tmp_path}/figures', f'--cost={cost}',
                         f'--discussion={discussion}']) == 0
  text = out.read_text()
  _, trials = _index(root)
  assert f'from {len(trials)} runs in 1 sweeps' in text
  best = report.best_setting(os.path.join(root, CONFIG))
  chosen = [t for t in trials.values() if {k: v for k, v in t['overrides'].items() if k != 'seed'} == best]
  steps = sorted(t['steps_to_target'] or float('inf') for t in chosen)
  assert len(steps) == 3 and steps[0] < float('inf')  # the target (a loss of 0.05) is within 40 steps
  median = f'{steps[1]:.0f} steps' if steps[1] < float('inf') else 'not reached'
  assert f'| lp_regression | {median} |' in text  # no Adam here: no ratio
  seed0 = next(t for t in chosen if t['overrides']['seed'] == 0)
  label = ', '.join(f'{key.rsplit(".", 1)[-1]}={value}' for key, value in best.items())
  assert f'**{label}: {seed0["steps_to_target"]} / ' in text  # the chosen setting in the sweep table
  assert '| lp_regression | checkpoint_every=1000, eval_every=10, log_every=10, num_steps=40' in text  # scale
  assert '### lp_regression' in text and '![lp_regression curves](figures/lp_regression_curves.png)' in text
  assert '### Step time' in text and text.rstrip().endswith('Adam alone here.')
  assert os.path.getsize(tmp_path / 'figures' / 'performance_profile_steps.png') > 10_000
  assert report_md.main([str(tmp_path / 'missing'), f'--out={out}', '--figures=x']) == 2


def test_unknown_config_is_one_line(capsys):
  assert report.main(['--configs=lp_regression_lion']) == 2
  assert "unknown config 'lp_regression_lion'" in capsys.readouterr().err
