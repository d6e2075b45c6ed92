"""Compares optimizers on finished runs and sweeps: time to target, curves, performance profile.

    python -m results.compare RUN_OR_SWEEP_DIRS... --out DIR [--baseline adam]
        [--profile_by seconds|steps] [--tau_max 4]

writes table.md, <task>_curves.png per task and performance_profile.png into DIR, then prints the
table and the PNG paths. Each optimizer is represented on a task by its best setting (fewest median
steps to target over seeds); tasks are never mixed. The profile is AlgoPerf's: per task, an
optimizer's time to target over the fastest optimizer's there.
"""

import dataclasses
import json
import math
import os
import sys
from typing import Iterable, NamedTuple

import matplotlib
import numpy as np

from errors import ArgumentParser
from results import plots
from results import runs as runs_lib

PROFILE_BY = {'seconds': 'train seconds', 'steps': 'steps'}
PROFILE_TAUS = (1.0, 1.5, 2.0)  # reported besides tau_max
SIGNIFICANT = '{:#.3g}'  # seconds and ratios: 3 significant digits, trailing zeros kept (0.100, 1.00)


class Stat(NamedTuple):
  """Median over seeds with its range; inf marks a seed that never reached the target."""
  median: float
  low: float
  high: float
  count: int

  @classmethod
  def of(cls, values: Iterable[float]) -> 'Stat':
    values = np.asarray(list(values), dtype=float)
    return cls(float(np.median(values)), float(values.min()), float(values.max()), len(values))


@dataclasses.dataclass
class Setting:
  """One optimizer's hyperparameters on one task: its runs differ only by seed."""
  task: str
  optimizer: str
  hyperparameters: dict
  runs: list[runs_lib.Run]

  @property
  def target(self) -> runs_lib.Target:
    return runs_lib.common_target(self.runs)

  @property
  def reached(self) -> int:
    return sum(math.isfinite(run.steps_to_target) for run in self.runs)

  def steps(self) -> Stat:
    return Stat.of(run.steps_to_target for run in self.runs)

  def seconds(self) -> Stat:
    return Stat.of(run.seconds_to_target for run in self.runs)

  def final(self) -> Stat | None:
    """The target metric at the end of each run that has a finite one (a diverged run may not)."""
    values = [value for run in self.runs
              if (value := run.final(self.target.metric)) is not None and math.isfinite(value)]
    return Stat.of(values) if values else None

  def rank(self) -> tuple[float, float]:
    """Fewest median steps to target first, then the best median final value of the metric."""
    final = self.final()
    return self.steps().median, self.target.rank(final.median if final else None)


def settings(runs: Iterable[runs_lib.Run]) -> list[Setting]:
  """Groups the seeds of each sweep setting; a plain run (no sweep) is a setting of its own."""
  groups: dict[tuple, Setting] = {}
  for run in runs:
    key = (run.task, run.optimizer, run.sweep or run.workdir,
           json.dumps(run.hyperparameters, sort_keys=True))
    groups.setdefault(key, Setting(run.task, run.optimizer, run.hyperparameters, [])).runs.append(run)
  return list(groups.values())


def best_per_optimizer(settings: Iterable[Setting]) -> dict[str, dict[str, Setting]]:
  """task -> optimizer -> its best setting on that task (see Setting.rank), sorted by name."""
  best: dict[str, dict[str, Setting]] = {}
  for setting in settings:
    current = best.setdefault(setting.task, {}).get(setting.optimizer)
    if current is None or setting.rank() < current.rank():
      best[setting.task][setting.optimizer] = setting
  return {task: dict(sorted(per.items())) for task, per in sorted(best.items())}


def times_to_target(best: dict[str, dict[str, Setting]],
                    by: str = 'seconds') -> dict[str, dict[str, float]]:
  """task -> optimizer -> median train seconds (or steps) to target of its best setting; inf: not reached."""
  if by not in PROFILE_BY:
    raise ValueError(f'unknown --profile_by {by!r}: use one of {", ".join(PROFILE_BY)}')
  return {task: {optimizer: (setting.seconds() if by == 'seconds' else setting.steps()).median
                 for optimizer, setting in per.items()}
          for task, per in best.items()}


@dataclasses.dataclass
class Profile:
  """AlgoPerf performance profile: r = an optimizer's time on a task / the fastest time there (inf:
  not reached or not run); rho(tau) = the fraction of tasks it has r <= tau on."""
  ratios: dict[str, dict[str, float]]  # optimizer -> task -> r
  tasks: list[str]
  tau_max: float

  def rho(self, optimizer: str, tau: float) -> float:
    return sum(r <= tau for r in self.ratios[optimizer].values()) / len(self.tasks)

  def score(self, optimizer: str) -> float:
    """Area under rho over [1, tau_max] over (tau_max - 1): a task with r <= tau_max adds
    (tau_max - r) / (tau_max - 1), so 1 means fastest everywhere and 0 never within tau_max."""
    area = sum(max(0.0, self.tau_max - r) for r in self.ratios[optimizer].values())
    return area / ((self.tau_max - 1) * len(self.tasks))


def performance_profile(times: dict[str, dict[str, float]], tau_max: float = 4.0) -> Profile:
  """The profile of task -> optimizer -> time to target; an optimizer missing on a task counts as inf."""
  if not times:
    raise ValueError('no task to profile')
  if not tau_max > 1:
    raise ValueError(f'--tau_max must be above 1, not {tau_max:g}')
  optimizers = sorted({optimizer for per in times.values() for optimizer in per})
  ratios: dict[str, dict[str, float]] = {optimizer: {} for optimizer in optimizers}
  for task, per in sorted(times.items()):
    fastest = min(per.values())
    for optimizer in optimizers:
      time = per.get(optimizer, math.inf)
      ratios[optimizer][task] = time / fastest if math.isfinite(time) else math.inf
  return Profile(ratios, sorted(times), float(tau_max))


def markdown_table(task: str, best: dict[str, Setting], baseline: str, rule: str = '') -> str:
  """One task's section: a row per optimizer (its best setting, by `rule` if not this module's),
  with ratios to `baseline`'s."""
  runs = [run for setting in best.values() for run in setting.runs]
  targets = {run.target for run in runs}
  target = runs_lib.common_target(runs)
  base = best.get(baseline)
  notes = []
  if base is None:
    notes.append(f'No {baseline} run on this task: no ratios (—).')
  elif not math.isfinite(base.steps().median):
    notes.append(f'{baseline} did not reach the target (median): no ratios (—).')
    base = None
  if len(targets) > 1:
    notes.append(f'Runs of this task have different targets ({"; ".join(sorted(map(str, targets)))}): '
                 'each run counts steps to its own.')
  header = ['optimizer', 'steps to target', f'× {baseline}', 'train s to target', f'× {baseline}',
            f'final {target.metric}', 'reached / seeds', 'hyperparameters', 'workdirs']
  rows = []
  for optimizer in sorted(best, key=lambda name: (name != baseline, name)):
    setting = best[optimizer]
    steps, seconds = setting.steps(), setting.seconds()
    rows.append([
        optimizer,
        _stat_cell(steps, '{:.0f}'), _ratio_cell(steps, base and base.steps()),
        _stat_cell(seconds, SIGNIFICANT), _ratio_cell(seconds, base and base.seconds()),
        _stat_cell(setting.final(), '{:.4g}'),
        f'{setting.reached}/{len(setting.runs)}',
        ', '.join(f'{key}={value}' for key, value in sorted(setting.hyperparameters.items())),
        '; '.join(_workdir_cell(run) for run in setting.runs),
    ])
  rule = rule or f'fewest median steps to target, then best final {target.metric}'
  intro = (f'Target: {target}. A row is the optimizer\'s best setting ({rule}); with several seeds, '
           'median (min–max), a seed that missed the target counting as ∞.')
  return '\n\n'.join([f'## {task}', intro, _table(header, rows), *notes])


def markdown_profile(profile: Profile, by: str = 'seconds') -> str:
  """The profile section: score, rho at a few tau, and each task's ratio r per optimizer."""
  taus = sorted({*PROFILE_TAUS, profile.tau_max})
  header = ['optimizer', 'score', *(f'ρ({tau:g})' for tau in taus), *(f'r {task}' for task in profile.tasks)]
  rows = [[optimizer, f'{profile.score(optimizer):.3f}',
           *(f'{profile.rho(optimizer, tau):.2f}' for tau in taus),
           *(_number(profile.ratios[optimizer][task], SIGNIFICANT) for task in profile.tasks)]
          for optimizer in sorted(profile.ratios, key=lambda name: (-profile.score(name), name))]
  intro = (f'r = an optimizer\'s {PROFILE_BY[by]} to target on a task (its best setting, median) / the '
           'fastest optimizer\'s there, ∞ if not reached or not run; ρ(τ) = fraction of tasks with '
           f'r ≤ τ; score = area under ρ over [1, {profile.tau_max:g}] / {profile.tau_max - 1:g}.')
  title = f'## Performance profile ({PROFILE_BY[by]} to target, {len(profile.tasks)} task(s))'
  return '\n\n'.join([title, intro, _table(header, rows)])


def report(best: dict[str, dict[str, Setting]], baseline: str, profile: Profile,
           by: str = 'seconds') -> str:
  """table.md: a section per task, then the performance profile."""
  sections = [markdown_table(task, per, baseline) for task, per in best.items()]
  return '\n\n'.join(['# Optimizer comparison', *sections, markdown_profile(profile, by)]) + '\n'


def write(out: str, text: str, best: dict[str, dict[str, Setting]], profile: Profile,
          by: str = 'seconds') -> list[str]:
  """table.md, <task>_curves.png (and <task>_diagnostics.png when runs logged curvature diagnostics)
  and performance_profile.png into `out`; returns the PNG paths."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(text)
  colors = plots.palette(profile.ratios)
  pngs = []
  for task, per in best.items():
    pngs.append(plots.save(plots.curves(task, list(per.values()), colors), os.path.join(out, f'{task}_curves.png')))
    figure = plots.diagnostics(task, list(per.values()), colors)
    if figure is not None:
      pngs.append(plots.save(figure, os.path.join(out, f'{task}_diagnostics.png')))
  pngs.append(plots.save(plots.profile(profile, colors, PROFILE_BY[by]),
                         os.path.join(out, 'performance_profile.png')))
  return pngs


def _stat_cell(stat: Stat | None, fmt: str) -> str:
  if stat is None:
    return '—'
  median = _number(stat.median, fmt) if math.isfinite(stat.median) else 'not reached'
  if stat.count == 1:
    return median
  return f'{median} ({_number(stat.low, fmt)}–{_number(stat.high, fmt)})'


def _ratio_cell(stat: Stat, base: Stat | None) -> str:
  return '—' if base is None else _number(stat.median / base.median, SIGNIFICANT)


def _number(value: float, fmt: str) -> str:
  return fmt.format(value).rstrip('.') if math.isfinite(value) else '∞'


def _workdir_cell(run: runs_lib.Run) -> str:
  """The workdir, with its status when the run neither completed nor stopped at its target."""
  unfinished = run.status not in ('completed', 'reached_target')
  return f'{run.workdir} ({run.status})' if unfinished else run.workdir


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = [header, ['---'] * len(header), *rows]
  return '\n'.join('| ' + ' | '.join(cell.replace('|', r'\|') for cell in line) + ' |' for line in lines)


def _parser() -> ArgumentParser:
  parser = ArgumentParser(prog='python -m results.compare', description=__doc__.splitlines()[0])
  parser.add_argument('paths', nargs='+', metavar='RUN_OR_SWEEP_DIR',
                      help='run workdirs, sweep directories, or directories holding them (e.g. runs)')
  parser.add_argument('--out', required=True, help='directory for table.md and the figures (created)')
  parser.add_argument('--baseline', default='adam', help='optimizer the ratios divide by')
  parser.add_argument('--profile_by', default='seconds', choices=sorted(PROFILE_BY),
                      help='time to target the performance profile compares')
  parser.add_argument('--tau_max', type=float, default=4.0, help='right end of the profile (> 1)')
  return parser


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 on success, 2 with one `error:` line on bad input (for a bad argument, as SystemExit)."""
  matplotlib.use('Agg')  # files only: no display is needed, and there may be none
  args = _parser().parse_args(argv)
  try:
    runs, skipped = runs_lib.load(args.paths)
    for message in skipped:
      print(message, file=sys.stderr)
    if not runs:
      raise ValueError(f'no finished run (with {runs_lib.SUMMARY_FILE}) in {" ".join(args.paths)}')
    best = best_per_optimizer(settings(runs))
    profile = performance_profile(times_to_target(best, args.profile_by), args.tau_max)
    text = report(best, args.baseline, profile, args.profile_by)
    pngs = write(args.out, text, best, profile, args.profile_by)
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(text, end='')
  print('\n'.join(pngs))
  return 0


if __name__ == '__main__':
  sys.exit(main())
