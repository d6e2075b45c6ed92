"""Figures for results.compare and its notebook: training curves per task, performance profile.

Figures are pyplot's, whatever the backend, so a notebook shows them inline; the CLI selects Agg
and writes them with `save`, which closes them.
"""

from typing import Iterable

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from results import runs as runs_lib

# (row, column) -> (split, x axis); row 0 is the train loss, row 1 the task's target metric.
PANELS = {(0, 0): ('train', 'step'), (0, 1): ('train', 'train seconds'),
          (1, 0): ('eval', 'step'), (1, 1): ('eval', 'train seconds')}


def palette(optimizers: Iterable[str]) -> dict[str, str]:
  """One colour per optimizer, the same in every figure of a comparison."""
  cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
  return {name: cycle[i % len(cycle)] for i, name in enumerate(sorted(set(optimizers)))}


def curves(task: str, settings: list, colors: dict[str, str] | None = None) -> Figure:
  """2x2: train loss and the target metric (eval) against steps and train seconds; every seed of
  each optimizer's setting in the optimizer's colour, labelled once; the target dashed."""
  colors = colors or palette(setting.optimizer for setting in settings)
  target = runs_lib.common_target(run for setting in settings for run in setting.runs)
  fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
  for (row, column), (split, x_label) in PANELS.items():
    ax = axes[row, column]
    key = 'loss' if split == 'train' else target.metric
    for setting in settings:
      for i, run in enumerate(setting.runs):
        steps, seconds, values = run.series(split, key)
        ax.plot(steps if column == 0 else seconds, values, color=colors[setting.optimizer],
                alpha=0.85, label=setting.optimizer if i == 0 else None)
    if split == 'eval':
      ax.axhline(target.value, color='0.3', linestyle='--', linewidth=1, label='target')
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [[]])
    if 'loss' in key and len(values) and np.all(values > 0):  # losses span decades
      ax.set_yscale('log')
    ax.set(xlabel=x_label, ylabel=f'{split} {key}')
    ax.grid(alpha=0.3)
    if column == 0:
      ax.legend()
  fig.suptitle(f'{task}: target {target}')
  return fig


DIAGNOSTICS = ('top_eigenvalue', 'r_med', 'hessian_trace', 'hessian_zero_fraction', 'shampoo_log10_cond_median')


def diagnostics(task: str, settings: list, colors: dict[str, str] | None = None) -> Figure | None:
  """One panel per curvature statistic (trainer/diagnostics.py) against step, a line per run in
  its optimizer's colour; None when no run of the task logged diagnostics."""
  colors = colors or palette(setting.optimizer for setting in settings)
  present = [key for key in DIAGNOSTICS
             if any(len(run.series('diagnostics', key)[0]) for setting in settings for run in setting.runs)]
  if not present:
    return None
  fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 4), constrained_layout=True,
                           squeeze=False)
  for ax, key in zip(axes[0], present):
    for setting in settings:
      for i, run in enumerate(setting.runs):
        steps, _, values = run.series('diagnostics', key)
        ax.plot(steps, values, color=colors[setting.optimizer], marker='.',
                label=setting.optimizer if i == 0 and len(steps) else None)
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [[]])
    if key in ('r_med', 'hessian_trace') and len(values) and np.all(values > 0):
      ax.set_yscale('log')
    ax.set(xlabel='step', title=key)
    ax.grid(alpha=0.3)
  axes[0, 0].legend()
  fig.suptitle(f'{task}: curvature on a fixed batch')
  return fig


def profile(profile, colors: dict[str, str] | None = None, measure: str = 'time') -> Figure:
  """rho(tau) per optimizer as the step function it is over [1, tau_max], its score in the legend."""
  colors = colors or palette(profile.ratios)
  fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
  for optimizer, ratios in profile.ratios.items():
    taus = np.unique([1.0, profile.tau_max, *(r for r in ratios.values() if r <= profile.tau_max)])
    ax.step(taus, [profile.rho(optimizer, tau) for tau in taus], where='post', linewidth=2,
            color=colors[optimizer], label=f'{optimizer} (score {profile.score(optimizer):.2f})')
  ax.set(xlim=(1, profile.tau_max), ylim=(-0.02, 1.02),
         xlabel=f'τ ({measure} to target / the fastest optimizer\'s)',
         ylabel='fraction of tasks with r ≤ τ',
         title=f'Performance profile over {len(profile.tasks)} task(s)')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right')
  return fig


def save(fig: Figure, path: str) -> str:
  """Writes `fig` as PNG and closes it (a long CLI run would otherwise keep every figure)."""
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
