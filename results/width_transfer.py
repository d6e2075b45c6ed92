"""Width transfer: does the best learning rate (or damping) stay put as the model widens (muP), or drift?

    python -m results.width_transfer runs/sweeps/width_transfer* --out=results/width_transfer

Reads the trials of launch/sweeps/width_transfer.py and width_transfer_damping.py (any sweep run
with a `width` in its summary and one swept optimizer hyperparameter; a sweep run with `--set` is a
setting of its own, labelled by it) and writes, under --out, `transfer.png` (final eval loss
against the swept hyperparameter, one curve per width; a row per task, optimizer and
hyperparameter, a column per parameterization) and `table.md`: per setting, the best value at each
width (* where it is the grid's smallest or largest) and these numbers:
  drift   log2(largest / smallest best value across widths): 0 = perfect transfer,
          1 = the optimum moved by a factor of 2;
  fitted  the same drift of the fitted optima: per width, the vertex of the parabola through the
          best value and its two neighbours (log value against log loss), which a flat optimum's
          noise moves by less than a whole grid step;
  regret  at the widest width, the loss with the narrowest width's best value over
          the best loss there, minus 1: what tuning narrow and training wide costs;
  spread  the mean, over swept values, of ln(max / min) of the final loss across widths: how far
          the whole curves are from lying on top of each other (0), which a flat optimum's noisy
          position does not move.
A diverged run counts as an infinite loss.
"""

import collections
import math
import os
import sys
from typing import Iterable, NamedTuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from errors import ArgumentParser
from results import plots
from results import runs as runs_lib

LOSS = 'loss'


class Transfer(NamedTuple):
  """One (task, optimizer and its sweep's --set settings, swept hyperparameter, parameterization):
  final loss per width and value of the hyperparameter."""
  task: str
  optimizer: str
  variant: str  # the sweep's --set settings, e.g. 'norm_constraint=0'; '' for none
  hyperparameter: str  # the swept one: 'learning_rate', 'damping', ...
  parameterization: str
  losses: dict[int, dict[float, float]]  # width -> value -> final eval loss (inf: diverged)
  workdirs: tuple[str, ...]

  @property
  def label(self) -> str:
    return f'{self.optimizer} ({self.variant})' if self.variant else self.optimizer

  def best(self) -> dict[int, float]:
    """Width -> the value with the lowest final loss (the smallest one on a tie)."""
    return {width: min(curve, key=lambda x: (curve[x], x)) for width, curve in sorted(self.losses.items())}

  def at_edge(self) -> set[int]:
    """Widths whose best value is the grid's smallest or largest: the optimum may lie beyond."""
    return {width for width, x in self.best().items() if x in (min(self.losses[width]), max(self.losses[width]))}

  def fitted(self) -> dict[int, float]:
    """Width -> the vertex of the parabola through the best value and its neighbours, in log value
    against log loss, kept between the neighbours; the best value itself at the grid's edge or next
    to a diverged run."""
    fitted = {}
    for width, best in self.best().items():
      values = list(self.losses[width])
      i = values.index(best)
      points = [(math.log2(x), math.log(self.losses[width][x])) for x in values[max(i - 1, 0):i + 2]]
      if len(points) < 3 or not all(math.isfinite(y) for _, y in points):
        fitted[width] = best
        continue
      (x0, y0), (x1, y1), (x2, y2) = points
      curvature = (y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)
      vertex = x1 if curvature <= 0 else (
          (x0 + x1) / 2 - (y1 - y0) / (x1 - x0) * (x2 - x0) / (2 * curvature))
      fitted[width] = 2.0 ** min(max(vertex, x0), x2)
    return fitted

  def drift(self, fitted: bool = False) -> float:
    best = (self.fitted() if fitted else self.best()).values()
    return math.log2(max(best) / min(best))

  def spread(self) -> float:
    """Mean over the learning rates every width ran without diverging of ln(max / min) of the final
    losses across widths: 0 when the curves of all widths coincide."""
    lrs = set.intersection(*(set(curve) for curve in self.losses.values()))
    gaps = [math.log(max(values) / min(values))
            for values in ([curve[lr] for curve in self.losses.values()] for lr in sorted(lrs))
            if all(map(math.isfinite, values))]
    return float(np.mean(gaps)) if gaps else math.nan

  def regret(self) -> float:
    widths = sorted(self.losses)
    narrow_best, wide = self.best()[widths[0]], self.losses[widths[-1]]
    transferred = wide.get(narrow_best, math.inf)
    return transferred / min(wide.values()) - 1 if math.isfinite(min(wide.values())) else math.nan


def _final_loss(run: runs_lib.Run) -> float:
  value = None if run.status == 'diverged' else run.final(LOSS)
  return math.inf if value is None or not math.isfinite(value) else value


def transfers(runs: Iterable[runs_lib.Run]) -> list[Transfer]:
  """The runs grouped into transfer curves; runs without a width, a sweep or one swept optimizer
  hyperparameter are ignored."""
  grouped = collections.defaultdict(lambda: collections.defaultdict(dict))
  workdirs = collections.defaultdict(list)
  for run in runs:
    width = run.summary.get('width')
    if width is None or run.sweep is None:
      continue
    swept = [key for key in run.overrides if key.startswith('optimizer.')]
    if len(swept) != 1:
      continue
    hyperparameter = swept[0].removeprefix('optimizer.')
    variant = ', '.join(f'{key.rsplit(".", 1)[-1]}={value}' for key, value in sorted(run.settings.items()))
    key = (run.task, run.optimizer, variant, hyperparameter, run.config.get('parameterization', 'standard'))
    grouped[key][width][run.config['optimizer'][hyperparameter]] = _final_loss(run)
    workdirs[key].append(run.workdir)
  return [Transfer(*key, {w: dict(sorted(c.items())) for w, c in sorted(grouped[key].items())},
                   tuple(sorted(workdirs[key])))
          for key in sorted(grouped)]


def markdown(results: list[Transfer]) -> str:
  lines = ['| task | optimizer | swept | parameterization | best value per width | drift (log2) | fitted drift '
           '| regret | spread |',
           '|---|---|---|---|---|---:|---:|---:|---:|']
  for t in results:
    edge = t.at_edge()
    best = ', '.join(f'{w}: {x:.3g}' + ('*' if w in edge else '') for w, x in t.best().items())
    lines.append(f'| {t.task} | {t.label} | {t.hyperparameter} | {t.parameterization} | {best} | {t.drift():.2f} | '
                 f'{t.drift(fitted=True):.2f} | {t.regret():.3f} | {t.spread():.3f} |')
  if any(t.at_edge() for t in results):
    lines.append('\n\\* at the edge of the grid: the optimum may lie beyond it, and the drift may be larger.')
  return '\n'.join(lines) + '\n'


def figure(results: list[Transfer]):
  settings = sorted({(t.task, t.label, t.hyperparameter) for t in results})
  columns = sorted({t.parameterization for t in results}, key=lambda p: p != 'standard')
  fig, axes = plt.subplots(len(settings), len(columns), figsize=(5 * len(columns), 3.2 * len(settings)),
                           squeeze=False, sharey='row')
  for t in results:
    ax = axes[settings.index((t.task, t.label, t.hyperparameter))][columns.index(t.parameterization)]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(t.losses)))
    finite = [v for curve in t.losses.values() for v in curve.values() if math.isfinite(v)]
    for color, (width, curve) in zip(colors, t.losses.items()):
      xs, values = zip(*curve.items())
      ax.plot(xs, [v if math.isfinite(v) else np.nan for v in values], 'o-', color=color, ms=3,
              label=f'width {width}')
      best = t.best()[width]
      if math.isfinite(curve[best]):
        ax.plot([best], [curve[best]], '*', color=color, ms=10)
    ax.set_xscale('log')
    if finite and min(finite) > 0:
      ax.set_yscale('log')
      ax.set_ylim(min(finite) * 0.9, min(max(finite), 20 * min(finite)))
    ax.set_title(f'{t.task} / {t.label} / {t.parameterization}: drift {t.drift():.2f} '
                 f'(fitted {t.drift(fitted=True):.2f})', fontsize=9)
    ax.set_xlabel(t.hyperparameter.replace('_', ' '))
    ax.set_ylabel(f'final eval {LOSS}')
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 on success, 2 with one `error:` line on bad input (for a bad argument, as SystemExit)."""
  matplotlib.use('Agg')
  parser = ArgumentParser(prog='python -m results.width_transfer', description=__doc__.splitlines()[0])
  parser.add_argument('paths', nargs='+', metavar='SWEEP_DIR', help='width_transfer sweep directories')
  parser.add_argument('--out', required=True, help='directory for table.md and transfer.png (created)')
  args = parser.parse_args(argv)
  try:
    runs, skipped = runs_lib.load(args.paths)
    for message in skipped:
      print(message, file=sys.stderr)
    results = transfers(runs)
    if not results:
      raise ValueError(f'no finished sweep trial with a width in {" ".join(args.paths)}')
    os.makedirs(args.out, exist_ok=True)
    text = markdown(results)
    with open(os.path.join(args.out, 'table.md'), 'w') as f:
      f.write(text)
    png = plots.save(figure(results), os.path.join(args.out, 'transfer.png'))
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(text, end='')
  print(png)
  return 0


if __name__ == '__main__':
  sys.exit(main())
