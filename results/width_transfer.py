"""Width transfer: does the best learning rate stay put as the model widens (muP), or drift (standard)?

    python -m results.width_transfer runs/sweeps/width_transfer-* --out=results/width_transfer

Reads the trials of launch/sweeps/width_transfer.py (any run with a `width` in its summary and a
swept learning rate) and writes, under --out, `transfer.png` (final eval loss against the learning
rate, one curve per width; a row per task and optimizer, a column per parameterization) and
`table.md`: per setting, the best learning rate at each width (* where it is the grid's smallest or
largest) and two numbers:
  drift   log2(largest / smallest best learning rate across widths): 0 = perfect transfer,
          1 = the optimum moved by a factor of 2;
  regret  at the widest width, the loss with the narrowest width's best learning rate over
          the best loss there, minus 1: what tuning narrow and training wide costs;
  spread  the mean, over learning rates, of ln(max / min) of the final loss across widths: how far
          the whole curves are from lying on top of each other (0), which a flat optimum's noisy
          position does not move.
A diverged run counts as an infinite loss.
"""

import argparse
import collections
import math
import os
import sys
from typing import Iterable, NamedTuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from results import plots
from results import runs as runs_lib

LOSS = 'loss'


class Transfer(NamedTuple):
  """One (task, optimizer, parameterization): final loss per width and learning rate."""
  task: str
  optimizer: str
  parameterization: str
  losses: dict[int, dict[float, float]]  # width -> learning rate -> final eval loss (inf: diverged)
  workdirs: tuple[str, ...]

  def best(self) -> dict[int, float]:
    """Width -> the learning rate with the lowest final loss (the smallest one on a tie)."""
    return {width: min(curve, key=lambda lr: (curve[lr], lr)) for width, curve in sorted(self.losses.items())}

  def at_edge(self) -> set[int]:
    """Widths whose best learning rate is the grid's smallest or largest: the optimum may lie beyond."""
    return {width for width, lr in self.best().items() if lr in (min(self.losses[width]), max(self.losses[width]))}

  def drift(self) -> float:
    best = self.best().values()
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
  """The runs grouped into transfer curves; runs without a width or sweep are ignored."""
  grouped = collections.defaultdict(lambda: collections.defaultdict(dict))
  workdirs = collections.defaultdict(list)
  for run in runs:
    width = run.summary.get('width')
    if width is None or run.sweep is None:
      continue
    key = (run.task, run.optimizer, run.config.get('parameterization', 'standard'))
    grouped[key][width][run.config['optimizer']['learning_rate']] = _final_loss(run)
    workdirs[key].append(run.workdir)
  return [Transfer(*key, {w: dict(sorted(c.items())) for w, c in sorted(grouped[key].items())},
                   tuple(sorted(workdirs[key])))
          for key in sorted(grouped)]


def markdown(results: list[Transfer]) -> str:
  lines = ['| task | optimizer | parameterization | best learning rate per width | drift (log2) | regret | spread |',
           '|---|---|---|---|---:|---:|---:|']
  for t in results:
    edge = t.at_edge()
    best = ', '.join(f'{w}: {lr:.3g}' + ('*' if w in edge else '') for w, lr in t.best().items())
    lines.append(f'| {t.task} | {t.optimizer} | {t.parameterization} | {best} | {t.drift():.2f} | '
                 f'{t.regret():.3f} | {t.spread():.3f} |')
  if any(t.at_edge() for t in results):
    lines.append('\n\\* at the edge of the learning-rate grid: the optimum may lie beyond it, and the drift '
                 'may be larger.')
  return '\n'.join(lines) + '\n'


def figure(results: list[Transfer]):
  settings = sorted({(t.task, t.optimizer) for t in results})
  columns = sorted({t.parameterization for t in results}, key=lambda p: p != 'standard')
  fig, axes = plt.subplots(len(settings), len(columns), figsize=(5 * len(columns), 3.2 * len(settings)),
                           squeeze=False, sharey='row')
  for t in results:
    ax = axes[settings.index((t.task, t.optimizer))][columns.index(t.parameterization)]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(t.losses)))
    finite = [v for curve in t.losses.values() for v in curve.values() if math.isfinite(v)]
    for color, (width, curve) in zip(colors, t.losses.items()):
      lrs, values = zip(*curve.items())
      ax.plot(lrs, [v if math.isfinite(v) else np.nan for v in values], 'o-', color=color, ms=3,
              label=f'width {width}')
      best = t.best()[width]
      if math.isfinite(curve[best]):
        ax.plot([best], [curve[best]], '*', color=color, ms=10)
    ax.set_xscale('log')
    if finite and min(finite) > 0:
      ax.set_yscale('log')
      ax.set_ylim(min(finite) * 0.9, min(max(finite), 20 * min(finite)))
    ax.set_title(f'{t.task} / {t.optimizer} / {t.parameterization}: drift {t.drift():.2f}', fontsize=9)
    ax.set_xlabel('learning rate')
    ax.set_ylabel(f'final eval {LOSS}')
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise ValueError(message)


def main(argv: list[str] | None = None) -> int:
  """The CLI: 0 on success, 2 with one `error:` line on bad input."""
  matplotlib.use('Agg')
  parser = _Parser(prog='python -m results.width_transfer', description=__doc__.splitlines()[0])
  parser.add_argument('paths', nargs='+', metavar='SWEEP_DIR', help='width_transfer sweep directories')
  parser.add_argument('--out', required=True, help='directory for table.md and transfer.png (created)')
  try:
    args = parser.parse_args(argv)
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
