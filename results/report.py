"""REPORT.md: the reproduction report, from launch/report.py's sweeps and bench/'s cost tables.

    python -m results.report runs/report --out=results/REPORT.md --figures=results/report \
        [--cost=results/report/cost_cpu.md ...] [--discussion=results/report_discussion.md]

Sections: a summary matrix (each optimizer's steps and train seconds to target over Adam's, per
task), a section per task (results.compare's table of each optimizer's best setting, median and
range over its seeds, with the workdirs, and its curves), the learning-rate sweep behind each best
setting (seed 0; a best rate at the grid's edge is marked), the performance profiles by seconds and
by steps, the cost tables (each --cost file as written by bench/), the wall time the sweeps took
(`<root>/timing.jsonl`) and the discussion (--discussion, written by hand from these numbers).
"""

import collections
import dataclasses
import json
import math
import os
import sys

import matplotlib
import numpy as np

from errors import ArgumentParser
from results import compare, plots
from results import runs as runs_lib

BASELINE = 'adam'
LEARNING_RATE = 'optimizer.learning_rate'
TIMING_FILE = 'timing.jsonl'  # launch/report.py appends a line per config and invocation: its wall seconds


def choose(settings: list[compare.Setting]) -> dict[str, dict[str, compare.Setting]]:
  """task -> optimizer -> the setting whose seed-0 run ranks best (results.compare's rule), with all
  its seeds: the choice launch/report.py made before adding seeds, so a one-seed setting whose lucky
  run beats the chosen one's median does not displace it."""
  seed0 = [compare.Setting(s.task, s.optimizer, s.hyperparameters, [run for run in s.runs if run.overrides.get('seed', 0) == 0])
           for s in settings]
  by_key = {(s.task, s.optimizer, json.dumps(s.hyperparameters, sort_keys=True)): s for s in settings}
  return {task: {optimizer: by_key[(task, optimizer, json.dumps(best.hyperparameters, sort_keys=True))]
                 for optimizer, best in per.items()}
          for task, per in compare.best_per_optimizer([s for s in seed0 if s.runs]).items()}


def sweep_seconds(root: str) -> float:
  """The wall seconds launch/report.py spent on `root`, over every invocation (0 if not recorded)."""
  path = os.path.join(root, TIMING_FILE)
  if not os.path.exists(path):
    return 0.0
  return sum(line['seconds'] for line in runs_lib.read_metrics(path))


def summary_matrix(best: dict[str, dict[str, compare.Setting]]) -> str:
  """Tasks x optimizers: median steps to target over Adam's (train seconds' ratio in brackets)."""
  optimizers = sorted({name for per in best.values() for name in per}, key=lambda name: (name != BASELINE, name))
  rows = []
  for task, per in best.items():
    base = per.get(BASELINE)
    cells = []
    for name in optimizers:
      setting = per.get(name)
      if setting is None:
        cells.append('not run')
      elif not math.isfinite(setting.steps().median):
        cells.append('not reached')
      elif base is None or not math.isfinite(base.steps().median):
        cells.append(f'{setting.steps().median:.0f} steps')
      else:
        cells.append(f'{setting.steps().median / base.steps().median:.2f} '
                     f'({setting.seconds().median / base.seconds().median:.2f})')
    rows.append([task, *cells])
  return compare._table(['task', *optimizers], rows)


def lr_sweeps(settings: list[compare.Setting], best: dict[str, dict[str, compare.Setting]]) -> str:
  """Per task and optimizer, each swept setting's seed-0 steps to target and final metric: the
  learning rates, then the dampings tried at the best of them; the chosen setting in bold, * when
  a value of it is the smallest or largest tried (the optimum may lie beyond)."""
  grouped = collections.defaultdict(list)
  for setting in settings:
    grouped[(setting.task, setting.optimizer)].append(setting)
  rows = []
  for (task, optimizer), group in sorted(grouped.items()):
    group.sort(key=lambda s: (len(_swept(s)), *_swept(s).values()))
    chosen = best[task][optimizer]
    cells = []
    for setting in group:
      seed0 = [run for run in setting.runs if run.overrides.get('seed', 0) == 0] or setting.runs
      steps, final = seed0[0].steps_to_target, seed0[0].final(setting.target.metric)
      swept = _swept(setting)
      label = ', '.join(f'{key.rsplit(".", 1)[-1]}={value}' for key, value in swept.items())
      text = (f'{label}: {f"{steps:.0f}" if math.isfinite(steps) else "—"} / '
              f'{"—" if final is None else f"{final:.4g}"}')
      if setting is chosen:
        edge = any(value in (min(tried), max(tried)) and len(tried) > 1
                   for key, value in swept.items()
                   for tried in [{_swept(s)[key] for s in group if key in _swept(s)}])
        text = f'**{text}**' + ('*' if edge else '')
      cells.append(text)
    rows.append([task, optimizer, '; '.join(cells)])
  return compare._table(['task', 'optimizer', 'setting: steps to target / final metric (seed 0)'], rows)


def _swept(setting: compare.Setting) -> dict:
  """What the sweeps varied for this setting (its trials' overrides), learning rate first."""
  overrides = {key: value for key, value in setting.runs[0].overrides.items() if key != 'seed'}
  return dict(sorted(overrides.items(), key=lambda item: item[0] != LEARNING_RATE))


def step_times(runs: list[runs_lib.Run]) -> str:
  """Tasks x optimizers: median train milliseconds per step over every report run (time to target
  = steps x this), and its ratio to Adam's; compilation and evaluation excluded."""
  per = collections.defaultdict(list)
  for run in runs:
    if run.summary.get('step'):
      per[(run.task, run.optimizer)].append(1000 * run.summary['train_seconds'] / run.summary['step'])
  medians = {key: float(np.median(values)) for key, values in per.items()}
  optimizers = sorted({name for _, name in medians}, key=lambda name: (name != BASELINE, name))
  rows = []
  for task in sorted({task for task, _ in medians}):
    base = medians.get((task, BASELINE))
    rows.append([task, *(('—' if (task, name) not in medians else
                          f'{medians[(task, name)]:.1f}' + (f' ({medians[(task, name)] / base:.2f})' if base else ''))
                         for name in optimizers)])
  return compare._table(['task', *optimizers], rows)


def scale(runs: list[runs_lib.Run]) -> str:
  """Per task, the settings every report run of it shared over the tiny config (launch/report.py's
  TASK_SETTINGS and any --set): run length, evaluation, target."""
  per_task = {}
  for run in sorted(runs, key=lambda run: run.task):
    per_task.setdefault(run.task, set()).add(json.dumps(run.settings, sort_keys=True))
  rows = [[task, ' / '.join(', '.join(f'{k}={v}' for k, v in json.loads(text).items()) or 'the tiny config as is'
                            for text in sorted(texts))]
          for task, texts in per_task.items()]
  return compare._table(['task', 'over its tiny configs'], rows)


def build(root: str, figures: str, cost_files: list[str], discussion: str | None,
          report_path: str) -> str:
  """REPORT.md's text; writes the figures into `figures`."""
  runs, skipped = runs_lib.load([root])
  for message in skipped:
    print(message, file=sys.stderr)
  if not runs:
    raise ValueError(f'no finished run in {root}: run `make report` (launch/report.py) first')
  settings = compare.settings(runs)
  best = choose(settings)
  profiles = {by: compare.performance_profile(compare.times_to_target(best, by)) for by in ('seconds', 'steps')}
  colors = plots.palette(run.optimizer for run in runs)
  os.makedirs(figures, exist_ok=True)
  link = os.path.relpath(figures, os.path.dirname(os.path.abspath(report_path)) or '.')

  devices = collections.Counter(f'{run.summary["devices"]["kind"]} x{run.summary["devices"]["count"]}'
                                for run in runs if 'devices' in run.summary)
  hours = sweep_seconds(root) / 3600
  sections = [
      '# Reproduction report',
      f'Generated by `make report` from {len(runs)} runs in {len({run.sweep for run in runs})} sweeps under '
      f'`{root}` (devices: {", ".join(f"{d} ({n} runs)" for d, n in devices.most_common())}); the sweeps '
      f'took {hours:.2f} h of wall time in all (launch/report.py, summed over its invocations). Every '
      'number below is read from a run workdir named in the task tables.',
      '## Summary: steps to target over Adam (train seconds over Adam)',
      'Median over the best setting\'s seeds; below 1 is faster than Adam.',
      summary_matrix(best),
      '## Scale',
      'Each task\'s tiny config (`configs/<task>_<optimizer>.py:tiny`) with these settings for every run:',
      scale(runs),
      '## Tasks',
  ]
  rule = 'by its seed-0 run, as launch/report.py chose it before running its other seeds'
  for task, per in best.items():
    shown = {name: dataclasses.replace(setting, hyperparameters=_swept(setting)) for name, setting in per.items()}
    sections.append(compare.markdown_table(task, shown, BASELINE, rule).replace('## ', '### ', 1))
    png = plots.save(plots.curves(task, list(per.values()), colors), os.path.join(figures, f'{task}_curves.png'))
    sections.append(f'![{task} curves]({os.path.join(link, os.path.basename(png))})')
  sections += ['## Learning-rate and damping sweeps', lr_sweeps(settings, best)]
  for by, profile in profiles.items():
    sections.append(compare.markdown_profile(profile, by))
    png = plots.save(plots.profile(profile, colors, compare.PROFILE_BY[by]),
                     os.path.join(figures, f'performance_profile_{by}.png'))
    sections.append(f'![performance profile ({by})]({os.path.join(link, os.path.basename(png))})')
  sections += ['## Step time on the tasks',
               'Median train milliseconds per step over all the report\'s runs of each optimizer (× Adam '
               'in brackets), compilation and evaluation excluded; runs started together (`--parallel`) shared the '
               'machine\'s cores, so these include that contention.',
               step_times(runs)]
  if cost_files:
    sections.append('## Optimizer cost (bench/shampoo_overhead.py)')
    for path in cost_files:
      with open(path) as f:
        sections.append(f.read().strip().replace('\n## ', '\n### '))
  if discussion:
    with open(discussion) as f:
      sections.append(f.read().strip())
  return '\n\n'.join(sections) + '\n'


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 on success, 2 with one `error:` line on bad input (for a bad argument, as SystemExit)."""
  matplotlib.use('Agg')
  parser = ArgumentParser(prog='python -m results.report', description=__doc__.splitlines()[0])
  parser.add_argument('root', help="launch/report.py's --root (a sweep per config)")
  parser.add_argument('--out', required=True, help='the report, e.g. results/REPORT.md')
  parser.add_argument('--figures', required=True, help='directory for its figures (created)')
  parser.add_argument('--cost', action='append', default=[], help='a cost table written by bench/ (repeatable)')
  parser.add_argument('--discussion', help='a markdown file appended as the discussion')
  args = parser.parse_args(argv)
  try:
    if not os.path.isdir(args.root):
      raise ValueError(f'{args.root}: no such directory')
    text = build(args.root, args.figures, args.cost, args.discussion, args.out)
    with open(args.out + '.tmp', 'w') as f:
      f.write(text)
    os.replace(args.out + '.tmp', args.out)
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
