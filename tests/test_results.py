"""results/: loading runs and sweeps, best settings, tables, performance profile, figures, CLI, notebook.

Workdirs are written by hand (config.json, metrics.jsonl, summary.json as trainer/ writes them),
so nothing trains here.
"""

import json
import math
import os
import subprocess
import sys

import matplotlib

matplotlib.use('Agg')

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from conftest import ROOT  # noqa: E402
from results import compare, runs as runs_lib  # noqa: E402

LP_TARGET = ('loss', 0.01, 'below')
WMT_TARGET = ('bleu', 30.0, 'above')


def write_run(workdir, task, optimizer, lr, target, steps_to_target, seconds_to_target, final,
              seed=0, num_steps=1000, summary=True, status='completed'):
  """A run workdir as the trainer leaves it; the target metric moves linearly to `final`."""
  os.makedirs(workdir)
  metric, value, direction = target
  config = {'seed': seed, 'task': {'name': task}, 'optimizer': {'name': optimizer, 'learning_rate': lr},
            'num_steps': num_steps, 'target': list(target)}
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config, f)
  start = 1.0 if direction == 'below' else 0.0
  seconds_per_step = (seconds_to_target / steps_to_target) if steps_to_target else 0.1
  lines = []
  for step in range(100, num_steps + 1, 100):
    timers = {'train_seconds': step * seconds_per_step, 'eval_seconds': 0.0, 'compile_seconds': 1.0,
              'checkpoint_seconds': 0.0, 'total_seconds': step * seconds_per_step + 1.0}
    current = start + (final - start) * step / num_steps
    lines.append({'step': step, 'split': 'train', 'loss': 2.0 / (1 + step / 100), 'grad_norm': 1.0,
                  'learning_rate': lr, **timers})
    lines.append({'step': step, 'split': 'eval', metric: current, 'accuracy': 0.5, **timers})
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(line) + '\n' for line in lines)
  if not summary:
    return
  name = f'{task}_{optimizer}'
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump({'name': name, 'size': 'tiny', 'task': task, 'optimizer': optimizer, 'status': status,
               'step': num_steps, 'target': {'metric': metric, 'value': value, 'direction': direction},
               'final_eval': {metric: final, 'accuracy': 0.5}, 'final_train': lines[-2],
               'steps_to_target': steps_to_target, 'train_seconds_to_target': seconds_to_target,
               'train_seconds': num_steps * seconds_per_step, 'total_seconds': num_steps * seconds_per_step + 1,
               'devices': {'platform': 'cpu', 'count': 1}, 'param_count': 100}, f)


SWEEP_TRIALS = [  # lr, seed, steps to target, seconds to target, final loss
    (0.1, 0, 200, 20.0, 0.004), (0.1, 1, 320, 32.0, 0.006),
    (0.01, 0, 100, 10.0, 0.005), (0.01, 1, None, None, 0.02),
]


@pytest.fixture
def bench(tmp_path):
  """lp_regression: adam x2, sgd (misses the target) as plain runs, shampoo as a 2 lr x 2 seed sweep
  with a pending trial; transformer (BLEU target): adam x2 (same steps, lr 0.003 has the better
  BLEU), shampoo."""
  root = tmp_path / 'runs'
  write_run(root / 'lp_regression_adam-tiny', 'lp_regression', 'adam', 0.01, LP_TARGET, 400, 20.0, 0.008)
  write_run(root / 'lp_regression_adam-slow', 'lp_regression', 'adam', 0.001, LP_TARGET, 600, 30.0, 0.009)
  write_run(root / 'lp_regression_sgd-tiny', 'lp_regression', 'sgd', 0.1, LP_TARGET, None, None, 0.05)
  write_run(root / 'transformer_adam-tiny', 'transformer', 'adam', 0.003, WMT_TARGET, 1000, 100.0, 32.0)
  write_run(root / 'transformer_adam-low', 'transformer', 'adam', 0.001, WMT_TARGET, 1000, 120.0, 31.0)
  write_run(root / 'transformer_shampoo-tiny', 'transformer', 'shampoo', 0.003, WMT_TARGET, 600, 90.0, 35.0)
  sweep = root / 'sweeps' / 'lp_shampoo'
  trials = []
  for lr, seed, steps, seconds, final in [*SWEEP_TRIALS, (1.0, 0, None, None, None)]:
    trial = f'learning_rate={lr},seed={seed}'
    pending = final is None
    write_run(sweep / trial, 'lp_regression', 'shampoo', lr, LP_TARGET, steps, seconds, final or 0.5,
              seed=seed, summary=not pending)
    trials.append({'id': trial, 'workdir': trial, 'status': 'pending' if pending else 'completed',
                   'overrides': {'optimizer.learning_rate': lr, 'seed': seed}})
  with open(sweep / 'sweep.json', 'w') as f:
    json.dump({'sweep': 'launch/sweeps/lr.py', 'config': 'configs/lp_regression_shampoo.py:tiny',
               'name': 'lp_regression_shampoo', 'size': 'tiny', 'trials': trials}, f)
  return root


def best_of(root):
  runs, _ = runs_lib.load([str(root)])
  return compare.best_per_optimizer(compare.settings(runs))


def test_load_finds_runs_and_sweeps_once_and_reports_unfinished(bench):
  # The trial reached first as a plain workdir still gets its sweep's overrides.
  runs, skipped = runs_lib.load([str(bench / 'sweeps' / 'lp_shampoo' / 'learning_rate=0.1,seed=0'),
                                 str(bench), str(bench / 'sweeps' / 'lp_shampoo')])
  assert len(runs) == 10
  pending = bench / 'sweeps' / 'lp_shampoo' / 'learning_rate=1.0,seed=0'
  assert skipped == [f'skipped {pending}: no summary.json (still running or crashed)']
  swept = [run for run in runs if run.sweep]
  assert len(swept) == 4 and all(run.sweep == str(bench / 'sweeps' / 'lp_shampoo') for run in swept)
  assert sorted(run.overrides['seed'] for run in swept) == [0, 0, 1, 1]
  assert {json.dumps(run.hyperparameters) for run in swept} == {
      '{"optimizer.learning_rate": 0.1}', '{"optimizer.learning_rate": 0.01}'}
  plain = next(run for run in runs if run.workdir.endswith('lp_regression_sgd-tiny'))
  assert plain.overrides == {} and plain.hyperparameters == {'optimizer.learning_rate': 0.1}
  assert plain.steps_to_target == math.inf and plain.final('loss') == 0.05


def test_load_errors_and_metrics_with_a_torn_last_line(bench, tmp_path):
  with pytest.raises(ValueError, match='no such directory'):
    runs_lib.load([str(tmp_path / 'nope')])
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  with pytest.raises(ValueError, match='holds no run'):
    runs_lib.load([str(tmp_path / 'empty')])
  workdir = bench / 'lp_regression_adam-tiny'
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 1100, "split": "tra')
  [run], _ = runs_lib.load([str(workdir)])
  assert len(run.metrics) == 20 and run.metrics[-1]['step'] == 1000
  steps, seconds, values = run.series('eval', 'loss')
  assert list(steps[:2]) == [100, 200] and seconds[0] == pytest.approx(5.0) and values[-1] == pytest.approx(0.008)


def test_best_setting_per_optimizer_medians_and_ranges(bench):
  best = best_of(bench)
  assert list(best) == ['lp_regression', 'transformer']
  assert list(best['lp_regression']) == ['adam', 'sgd', 'shampoo']
  assert list(best['transformer']) == ['adam', 'shampoo']  # tasks never mixed
  shampoo = best['lp_regression']['shampoo']
  # lr 0.01 has the fastest seed but its other seed missed: median of (100, inf) is inf.
  assert shampoo.hyperparameters == {'optimizer.learning_rate': 0.1}
  assert shampoo.steps() == (260.0, 200.0, 320.0, 2)
  assert shampoo.seconds() == (26.0, 20.0, 32.0, 2)
  assert shampoo.final().median == pytest.approx(0.005)
  assert best['lp_regression']['adam'].hyperparameters == {'optimizer.learning_rate': 0.01}
  # Same steps to target: the higher final BLEU (direction 'above') wins.
  assert best['transformer']['adam'].hyperparameters == {'optimizer.learning_rate': 0.003}
  runs, _ = runs_lib.load([str(bench / 'sweeps')])
  [missed] = [s for s in compare.settings(runs) if s.hyperparameters['optimizer.learning_rate'] == 0.01]
  assert missed.steps() == (math.inf, 100.0, math.inf, 2) and missed.reached == 1


def test_markdown_table_ratios_and_not_reached(bench):
  best = best_of(bench)
  rows = {line.split(' | ')[0][2:]: line.split(' | ')
          for line in compare.markdown_table('lp_regression', best['lp_regression'], 'adam').splitlines()
          if line.startswith('| ') and not line.startswith('| optimizer') and '---' not in line}
  assert list(rows) == ['adam', 'sgd', 'shampoo']  # baseline first
  assert rows['shampoo'][1:8] == ['260 (200–320)', '0.650', '26.0 (20.0–32.0)', '1.30', '0.005 (0.004–0.006)',
                                  '2/2', 'optimizer.learning_rate=0.1']
  assert rows['adam'][1:5] == ['400', '1.00', '20.0', '1.00']
  assert rows['sgd'][1:7] == ['not reached', '∞', 'not reached', '∞', '0.05', '0/1']
  assert rows['sgd'][8] == f'{bench / "lp_regression_sgd-tiny"} |'
  # The lr 0.01 setting alone: infinite median with its range; no baseline on the task.
  runs, _ = runs_lib.load([str(bench / 'sweeps')])
  [missed] = [s for s in compare.settings(runs) if s.hyperparameters['optimizer.learning_rate'] == 0.01]
  text = compare.markdown_table('lp_regression', {'shampoo': missed}, 'adam')
  assert '| shampoo | not reached (100–∞) | — | not reached (10.0–∞) | — |' in text
  assert 'No adam run on this task: no ratios (—).' in text
  # A baseline that missed the target gives no ratios either.
  text = compare.markdown_table('lp_regression', best['lp_regression'], 'sgd')
  assert 'sgd did not reach the target (median)' in text and '| shampoo | 260 (200–320) | — |' in text


def test_performance_profile_hand_computed():
  profile = compare.performance_profile(
      {'a': {'x': 10.0, 'y': 20.0}, 'b': {'x': 30.0, 'y': math.inf}, 'c': {'x': 5.0}}, tau_max=3.0)
  assert profile.tasks == ['a', 'b', 'c']
  assert profile.ratios == {'x': {'a': 1.0, 'b': 1.0, 'c': 1.0}, 'y': {'a': 2.0, 'b': math.inf, 'c': math.inf}}
  assert [profile.rho('y', tau) for tau in (1.0, 1.9, 2.0, 3.0)] == [0, 0, pytest.approx(1 / 3), pytest.approx(1 / 3)]
  assert profile.score('x') == 1.0 and profile.score('y') == pytest.approx(1 / 6)
  with pytest.raises(ValueError, match='tau_max'):
    compare.performance_profile({'a': {'x': 1.0}}, tau_max=1.0)


def test_performance_profile_of_the_bench(bench):
  best = best_of(bench)
  assert compare.times_to_target(best, 'seconds') == {
      'lp_regression': {'adam': 20.0, 'sgd': math.inf, 'shampoo': 26.0},
      'transformer': {'adam': 100.0, 'shampoo': 90.0}}
  profile = compare.performance_profile(compare.times_to_target(best, 'seconds'), tau_max=4.0)
  assert profile.ratios['adam'] == {'lp_regression': 1.0, 'transformer': pytest.approx(10 / 9)}
  assert profile.ratios['sgd'] == {'lp_regression': math.inf, 'transformer': math.inf}  # sgd never ran on transformer
  assert [profile.rho('adam', tau) for tau in (1.0, 1.2, 1.5)] == [0.5, 1.0, 1.0]
  assert [profile.rho('shampoo', tau) for tau in (1.0, 1.2, 1.5)] == [0.5, 0.5, 1.0]
  assert profile.score('adam') == pytest.approx((3 + (4 - 10 / 9)) / 6)
  assert profile.score('shampoo') == pytest.approx((3 + (4 - 1.3)) / 6)
  assert profile.score('sgd') == 0.0
  steps = compare.performance_profile(compare.times_to_target(best, 'steps'), tau_max=4.0)
  assert steps.score('shampoo') == 1.0
  assert steps.score('adam') == pytest.approx(((4 - 400 / 260) + (4 - 1000 / 600)) / 6)
  text = compare.markdown_profile(profile, 'seconds')
  assert '| adam | 0.981 | 0.50 | 1.00 | 1.00 | 1.00 | 1.00 | 1.11 |' in text
  assert '| sgd | 0.000 | 0.00 | 0.00 | 0.00 | 0.00 | ∞ | ∞ |' in text


def test_cli_writes_files_without_importing_jax(bench, tmp_path):
  out = tmp_path / 'out'
  code = ('import runpy, sys\n'
          f'sys.argv = ["compare", {str(bench)!r}, "--out", {str(out)!r}, "--profile_by", "steps"]\n'
          'try:\n'
          '  runpy.run_module("results.compare", run_name="__main__", alter_sys=True)\n'
          'except SystemExit as e:\n'
          '  print("EXIT", e.code)\n'
          'print("IMPORTED", [m for m in ("jax", "trainer", "tasks", "optimizers", "tensorflow") if m in sys.modules])\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.stdout.splitlines()[-2:] == ['EXIT 0', 'IMPORTED []'], result.stderr
  pngs = [str(out / 'lp_regression_curves.png'), str(out / 'transformer_curves.png'),
          str(out / 'performance_profile.png')]
  assert result.stdout.splitlines()[-5:-2] == pngs
  assert all(os.path.getsize(png) > 10_000 for png in pngs)
  with open(out / 'table.md') as f:
    table = f.read()
  assert result.stdout.startswith(table)
  assert table.index('## lp_regression') < table.index('## transformer') < table.index('## Performance profile (steps')
  pending = bench / 'sweeps' / 'lp_shampoo' / 'learning_rate=1.0,seed=0'
  assert result.stderr.splitlines() == [f'skipped {pending}: no summary.json (still running or crashed)']


@pytest.mark.parametrize('args, message', [
    (['{tmp}/nope'], 'error: {tmp}/nope: no such directory'),
    (['{bench}/sweeps/lp_shampoo/learning_rate=1.0,seed=0'], 'error: no finished run (with summary.json) in'),
    (['{bench}', '--profile_by', 'minutes'], "error: argument --profile_by: invalid choice: 'minutes'"),
    (['{bench}', '--tau_max', '0.5'], 'error: --tau_max must be above 1, not 0.5'),
])
def test_cli_bad_input_is_one_error_line(bench, tmp_path, capsys, args, message):
  args = [arg.format(tmp=tmp_path, bench=bench) for arg in args]
  try:
    code = compare.main([*args, '--out', str(tmp_path / 'out')])
  except SystemExit as exit_:  # a bad argument: the parser exits
    code = exit_.code
  assert code == 2
  errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith('skipped ')]
  assert len(errors) == 1 and errors[0].startswith(message.format(tmp=tmp_path, bench=bench))
  assert not (tmp_path / 'out').exists()


def test_notebook_runs_top_to_bottom(bench, capsys):
  with open(os.path.join(ROOT, 'results', 'compare.ipynb')) as f:
    notebook = json.load(f)
  assert notebook['nbformat'] == 4
  code = [cell for cell in notebook['cells'] if cell['cell_type'] == 'code']
  assert code[0]['metadata']['tags'] == ['parameters']
  assert all(cell['outputs'] == [] and cell['execution_count'] is None for cell in code)
  namespace = {}
  for cell in code:
    exec(''.join(cell['source']), namespace)
    if cell is code[0]:
      assert namespace['RUN_DIRS'] == ['runs'] and namespace['BASELINE'] == 'adam'
      exec(f'RUN_DIRS = {[str(bench)]!r}', namespace)  # what papermill injects
  try:
    assert namespace['best']['lp_regression']['shampoo'].steps().median == 260
    assert namespace['profile'].score('sgd') == 0.0
    assert plt.get_fignums() and len(plt.get_fignums()) == 3  # two tasks' curves + the profile
  finally:
    plt.close('all')
  out = capsys.readouterr().out
  assert 'skipped ' in out and '| shampoo | 260 (200–320) | 0.650 |' in out


def write_width_sweep(sweep_dir, parameterization: str, best_lr_of_width, settings=None) -> None:
  """A width_transfer sweep (run with `--set settings`) whose final loss is (log2 lr - log2 best lr
  of the width)^2 + 0.1; the largest learning rate at the widest width diverged."""
  trials = []
  widths, lrs = (64, 128, 256, 512), [0.01 * 2.0 ** k for k in range(-3, 2)]
  for width in widths:
    for lr in lrs:
      trial = f'parameterization={parameterization},width={width},learning_rate={lr:g},seed=0'
      diverged = width == 512 and lr == lrs[-1]
      loss = (math.log2(lr) - math.log2(best_lr_of_width(width))) ** 2 + 0.1
      write_run(sweep_dir / trial, 'lp_regression', 'adam', lr, LP_TARGET, None, None, loss,
                status='diverged' if diverged else 'completed')
      for name, update in (('summary.json', {'width': width}), ('config.json', {'parameterization': parameterization})):
        path = sweep_dir / trial / name
        content = {**json.loads(path.read_text()), **update}
        path.write_text(json.dumps(content))
      trials.append({'id': trial, 'workdir': trial, 'status': 'completed',
                     'overrides': {'parameterization': parameterization, 'task.width': width,
                                   'optimizer.learning_rate': lr, 'seed': 0}})
  (sweep_dir / 'sweep.json').write_text(json.dumps({'trials': trials, 'fixed': {'base_width': 64, **(settings or {})},
                                                    'set': settings or {}}))


def test_width_transfer_best_rates_drift_and_regret(tmp_path):
  from results import width_transfer
  write_width_sweep(tmp_path / 'standard', 'standard', lambda width: 0.01 * 64 / width)  # optimum ~ 1/width
  write_width_sweep(tmp_path / 'mup', 'mup', lambda width: 0.01)
  write_width_sweep(tmp_path / 'mup_eps', 'mup', lambda width: 0.01 * width / 64, {'optimizer.eps': 1e-6})
  runs, _ = runs_lib.load([str(tmp_path / 'standard'), str(tmp_path / 'mup'), str(tmp_path / 'mup_eps')])
  mup, standard, mup_eps = width_transfer.transfers(runs)
  assert (standard.parameterization, mup.parameterization) == ('standard', 'mup')
  assert (mup.label, mup_eps.label, mup_eps.parameterization) == ('adam', 'adam (eps=1e-06)', 'mup')
  assert {t.hyperparameter for t in (mup, standard, mup_eps)} == {'learning_rate'}
  # Its optimum doubles with width up to the grid's top (0.02), which diverged at width 512.
  assert mup_eps.best() == pytest.approx({64: 0.01, 128: 0.02, 256: 0.02, 512: 0.01}) and mup_eps.drift() == 1.0
  assert {run.hyperparameters['optimizer.eps'] for run in runs if run.settings} == {1e-6}  # compare's label too
  assert standard.best() == pytest.approx({64: 0.01, 128: 0.005, 256: 0.0025, 512: 0.00125})
  assert standard.drift() == pytest.approx(3.0) and mup.drift() == 0.0
  assert standard.regret() == pytest.approx(9.1 / 0.1 - 1)  # lr 0.01 at width 512: 3 octaves off
  assert mup.regret() == 0.0
  assert mup.spread() == 0.0  # the same curve at every width; the diverged lr is left out
  # At lr 0.01 * 2^k the losses across widths are (k + j)^2 + 0.1 for j = 0..3 octaves of drift.
  expected = [math.log(max((k + j) ** 2 + 0.1 for j in range(4)) / min((k + j) ** 2 + 0.1 for j in range(4)))
              for k in range(-3, 1)]
  assert standard.spread() == pytest.approx(sum(expected) / 4)
  assert mup.losses[512][0.02] == math.inf  # the diverged trial

  out = tmp_path / 'out'
  assert width_transfer.main([str(tmp_path / 'standard'), str(tmp_path / 'mup'), str(tmp_path / 'mup_eps'),
                              '--out', str(out)]) == 0
  table = (out / 'table.md').read_text()
  assert '| adam (eps=1e-06) | learning_rate | mup | 64: 0.01, 128: 0.02*, 256: 0.02*, 512: 0.01 | 1.00 |' in table
  assert standard.at_edge() == {512} and mup.at_edge() == set()  # 0.00125 is the grid's smallest
  assert ('| lp_regression | adam | learning_rate | standard | 64: 0.01, 128: 0.005, 256: 0.0025, 512: 0.00125* '
          '| 3.00 | 3.00 | 90.000 |') in table
  assert '* at the edge of the grid' in table
  assert (out / 'transfer.png').stat().st_size > 10_000
  assert width_transfer.main([str(tmp_path / 'nothing'), '--out', str(out)]) == 2


def test_width_transfer_fitted_optimum_is_the_parabolas_vertex():
  from results import width_transfer
  grid = [0.01 * 2.0 ** k for k in range(-3, 3)]
  vertex = {64: math.log2(0.01) + 0.3, 128: math.log2(0.01) - 0.45, 256: math.log2(0.04) + 1}  # 256: past the grid
  losses = {width: {x: math.exp((math.log2(x) - v) ** 2) for x in grid} for width, v in vertex.items()}
  losses[128][0.02] = math.inf  # a diverged neighbour: no parabola, the best value
  t = width_transfer.Transfer('lp_regression', 'kfac', '', 'damping', 'mup', losses, ())
  assert t.best() == pytest.approx({64: 0.01, 128: 0.01, 256: 0.04})
  assert t.fitted() == pytest.approx({64: 0.01 * 2 ** 0.3, 128: 0.01, 256: 0.04})
  losses[128][0.02] = math.exp((math.log2(0.02) - vertex[128]) ** 2)
  assert t.fitted()[128] == pytest.approx(0.01 * 2 ** -0.45)
  assert t.drift(fitted=True) == pytest.approx(math.log2(0.04 / (0.01 * 2 ** -0.45)))
