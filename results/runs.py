"""Finished runs read from their workdirs and sweeps, with the standard library and numpy only.

A run workdir holds config.json, metrics.jsonl and, once the run has ended, summary.json (all
written by trainer/). A sweep directory (launch.sweep) holds sweep.json, listing its trials: run
workdirs relative to it, with the config overrides each was started with. Reading files only keeps
comparisons fast to start and usable where JAX is not installed.
"""

import collections
import dataclasses
import functools
import json
import math
import os
import sys
from typing import Iterable, NamedTuple

import numpy as np

from errors import ConfigError

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
SWEEP_FILE = 'sweep.json'
SEARCH_DEPTH = 2  # a plain directory is searched this deep, e.g. runs/<run> and runs/sweeps/<sweep>


class Target(NamedTuple):
  """The eval metric a run has to reach, as summary.json states it."""
  metric: str
  value: float
  direction: str  # 'above' or 'below'

  def rank(self, value: float | None) -> float:
    """Smaller is better whatever the direction, so settings sort with one key; missing is worst."""
    if value is None or not math.isfinite(value):
      return math.inf
    return -value if self.direction == 'above' else value

  def __str__(self) -> str:
    return f'eval {self.metric} {self.direction} {self.value:g}'


@dataclasses.dataclass
class Run:
  """One finished run. `metrics` is read on first use: only the curves need it."""
  workdir: str
  task: str
  optimizer: str
  name: str
  config: dict
  summary: dict
  overrides: dict = dataclasses.field(default_factory=dict)  # the sweep trial's; {} for a plain run
  sweep: str | None = None  # the sweep directory the run is a trial of
  settings: dict = dataclasses.field(default_factory=dict)  # its sweep's --set values, shared by every trial

  @functools.cached_property
  def metrics(self) -> list[dict]:
    return read_metrics(os.path.join(self.workdir, METRICS_FILE))

  @property
  def target(self) -> Target:
    target = self.summary['target']
    return Target(target['metric'], float(target['value']), target['direction'])

  @property
  def status(self) -> str:
    return self.summary.get('status', 'unknown')

  @property
  def hyperparameters(self) -> dict:
    """What makes this run's setting: its sweep's --set values and overrides except the seed (seeds
    of a setting are aggregated); for a plain run or a seed-only sweep, the learning rate every
    optimizer has."""
    tuned = {key: value for key, value in {**self.settings, **self.overrides}.items() if key != 'seed'}
    return tuned or {'optimizer.learning_rate': self.config['optimizer']['learning_rate']}

  @property
  def steps_to_target(self) -> float:
    """inf when the target was not reached, so medians and ratios need no special case."""
    return _or_inf(self.summary.get('steps_to_target'))

  @property
  def seconds_to_target(self) -> float:
    """Training-clock seconds to the target; inf when not reached."""
    return _or_inf(self.summary.get('train_seconds_to_target'))

  def final(self, metric: str) -> float | None:
    """The final eval value of `metric`; from the last eval line that has it when the final eval
    did not compute it (BLEU, say, is computed every few evals only)."""
    value = (self.summary.get('final_eval') or {}).get(metric)
    if value is None:
      values = self.series('eval', metric)[2]
      value = float(values[-1]) if len(values) else None
    return value

  def series(self, split: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, train_seconds, value) over the `split` lines of metrics.jsonl that have `key`."""
    lines = [line for line in self.metrics if line.get('split') == split and key in line]
    return tuple(np.array([line[k] for line in lines], dtype=float)
                 for k in ('step', 'train_seconds', key))


def common_target(runs: Iterable[Run]) -> Target:
  """The target most of `runs` share (they should all share it: one task, one target)."""
  return collections.Counter(run.target for run in runs).most_common(1)[0][0]


def read_metrics(path: str) -> list[dict]:
  """The lines of a metrics.jsonl, less a torn last line (a run killed mid-write), with a warning.

  As trainer/writers.read_jsonl reads it on resume; results/ may not import the trainer.

  Raises:
    ConfigError: a line before the last is not a JSON object (names the file and line).
  """
  if not os.path.exists(path):
    return []
  with open(path, 'rb') as f:
    lines = [(number, line) for number, line in enumerate(f.read().split(b'\n'), 1) if line.strip()]
  metrics = []
  for number, line in lines:
    try:
      record = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
      record = None
    if isinstance(record, dict):
      metrics.append(record)
    elif number < lines[-1][0]:
      raise ConfigError(f'{path}: line {number} is not a JSON object')
    else:
      print(f'{os.path.basename(path)}: dropped a torn last line ({len(line)} bytes)', file=sys.stderr)
  return metrics


def load(paths: Iterable[str]) -> tuple[list[Run], list[str]]:
  """The finished runs under `paths`, each once, and a message per workdir without summary.json.

  A path is a run workdir, a sweep directory, or a directory holding them (searched two levels
  deep). Raises ValueError for a path that does not exist or holds neither.
  """
  found: dict[str, tuple[str, dict, str | None, dict]] = {}
  for path in paths:
    if not os.path.isdir(path):
      raise ValueError(f'{path}: no such directory')
    candidates = _candidates(os.path.normpath(path), SEARCH_DEPTH)
    if not candidates:
      raise ValueError(f'{path}: holds no run workdir ({CONFIG_FILE}) or sweep ({SWEEP_FILE})')
    for candidate in candidates:
      key = os.path.realpath(candidate[0])
      if key not in found or (candidate[2] and not found[key][2]):  # only its sweep knows its overrides
        found[key] = candidate
  runs, skipped = [], []
  for workdir, overrides, sweep, settings in found.values():
    if not os.path.exists(os.path.join(workdir, SUMMARY_FILE)):
      skipped.append(f'skipped {workdir}: no {SUMMARY_FILE} (still running or crashed)')
      continue
    summary = _read_json(os.path.join(workdir, SUMMARY_FILE))
    runs.append(Run(workdir=workdir, task=summary['task'], optimizer=summary['optimizer'],
                    name=summary['name'], config=_read_json(os.path.join(workdir, CONFIG_FILE)),
                    summary=summary, overrides=overrides, sweep=sweep, settings=settings))
  return runs, skipped


def _candidates(path: str, depth: int) -> list[tuple[str, dict, str | None, dict]]:
  """(workdir, overrides, sweep dir, --set settings) of every run workdir or sweep trial at or below `path`."""
  if os.path.exists(os.path.join(path, SWEEP_FILE)):
    return _trials(path)
  if os.path.exists(os.path.join(path, CONFIG_FILE)):
    return [(path, {}, None, {})]
  if depth == 0:
    return []
  subdirs = sorted(entry.path for entry in os.scandir(path)
                   if entry.is_dir() and not entry.name.startswith('.'))
  return [candidate for subdir in subdirs for candidate in _candidates(subdir, depth - 1)]


def _trials(sweep_dir: str) -> list[tuple[str, dict, str, dict]]:
  """The sweep's trials with their overrides, less those every trial shares (`fixed`), and its --set."""
  sweep = _read_json(os.path.join(sweep_dir, SWEEP_FILE))
  fixed = sweep.get('fixed') or {}
  try:
    return [(os.path.join(sweep_dir, trial['workdir']),
             {key: value for key, value in (trial.get('overrides') or {}).items() if key not in fixed},
             sweep_dir, dict(sweep.get('set') or {}))
            for trial in sweep['trials']]
  except (KeyError, TypeError) as e:
    raise ValueError(f'{os.path.join(sweep_dir, SWEEP_FILE)}: malformed trials ({e!r})') from None


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: {e}') from None


def _or_inf(value: float | None) -> float:
  return math.inf if value is None else float(value)
