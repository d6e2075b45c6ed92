"""Metric writers: clu's TensorBoard + logging writers, plus `metrics.jsonl`.

Scalars are written as '<split>/<name>' (TensorBoard groups them by split).
`metrics.jsonl` is what `results/` reads: one line per (step, split) with the
unprefixed names and the run timers at that moment, so curves can be drawn
against steps or against train-seconds without TensorBoard.

An append cut short (a kill or a full disk mid-write) leaves a torn last line:
it is dropped with a warning, and a resume recomputes it. A malformed line
before the last is damage no append leaves, so it stops the run by name.
"""

import collections
import json
import os
from typing import Callable, Mapping

import numpy as np
from absl import logging
from clu import metric_writers
from clu.metric_writers import interface

from errors import ConfigError

METRICS_FILE = 'metrics.jsonl'


class JsonlWriter(interface.MetricWriter):
  """Appends {"step", "split", metrics..., timers...} lines; flushes every write."""

  def __init__(self, path: str, timers: Callable[[], Mapping[str, float]]):
    self._path = path
    self._timers = timers

  def write_scalars(self, step, scalars):
    by_split = collections.defaultdict(dict)
    for key, value in scalars.items():
      split, sep, name = key.partition('/')  # 'diagnostics/r_med/encoder/kernel': split 'diagnostics'
      if not sep:
        split, name = 'train', key
      by_split[split][name] = float(np.asarray(value))
    timers = self._timers()
    with open(self._path, 'a') as f:
      for split, values in by_split.items():
        f.write(json.dumps({'step': int(step), 'split': split, **values, **timers}) + '\n')

  # Only scalars go to the JSONL file; everything else is TensorBoard's.
  def write_summaries(self, step, values, metadata=None): pass
  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_hparams(self, hparams): pass
  def flush(self): pass
  def close(self): pass


def read_jsonl(path: str) -> list[dict]:
  """The objects of a JSON-lines file ([] if there is none), less a torn last line.

  Raises:
    ConfigError: a line before the last is not a JSON object (names the file and line).
  """
  if not os.path.exists(path):
    return []
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  records = []
  for i, line in enumerate(lines[:last + 1]):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
      record = None
    if isinstance(record, dict):
      records.append(record)
    elif i == last:
      logging.warning('%s: dropped a torn last line (%d bytes)', os.path.basename(path), len(line))
    else:
      raise ConfigError(f'{path}: line {i + 1} is not a JSON object')
  return records


def truncate_after(path: str, step: int) -> None:
  """Keeps the lines up to `step` (a resumed run recomputes the rest), and no torn last line."""
  if not os.path.exists(path):
    return
  kept = ''.join(json.dumps(record) + '\n' for record in read_jsonl(path) if record['step'] <= step).encode()
  with open(path, 'rb') as f:
    if f.read() == kept:
      return
  with open(path + '.tmp', 'wb') as f:
    f.write(kept)
  os.replace(path + '.tmp', path)


def create(workdir: str, is_main_process: bool,
           timers: Callable[[], Mapping[str, float]]) -> interface.MetricWriter:
  """TensorBoard events + log lines (+ metrics.jsonl on the main process)."""
  tensorboard = metric_writers.create_default_writer(
      workdir, just_logging=not is_main_process, asynchronous=False)
  if not is_main_process:
    return tensorboard
  return metric_writers.MultiWriter(
      [tensorboard, JsonlWriter(os.path.join(workdir, METRICS_FILE), timers)])
