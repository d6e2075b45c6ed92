"""Metric writers: clu's TensorBoard + logging writers, plus `metrics.jsonl`.

Scalars are written as '<split>/<name>' (TensorBoard groups them by split).
`metrics.jsonl` is what `results/` reads: one line per (step, split) with the
unprefixed names and the run timers at that moment, so curves can be drawn
against steps or against train-seconds without TensorBoard.

An append cut short (a kill or a full disk mid-write) leaves a torn last line:
it is dropped with a warning, and a resume recomputes it. A malformed line
before the last is damage no append leaves, so it stops the run by name.
A write the disk refuses, to either file, is one `WriteError` naming the file.
"""

import collections
import contextlib
import json
import os
import re
from typing import Callable, Mapping

import numpy as np
import tensorflow as tf  # clu's TensorBoard writer: its errors are TensorFlow's
from absl import logging
from clu import metric_writers
from clu.metric_writers import interface

from errors import ConfigError
from trainer.workdir import WriteError, writing

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
    with writing(f'step {int(step)} metrics', self._path), open(self._path, 'a') as f:
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
  with writing(f'the metrics up to step {step}', path):
    with open(path + '.tmp', 'wb') as f:
      f.write(kept)
    os.replace(path + '.tmp', path)


@contextlib.contextmanager
def _writing_events(workdir: str):
  """TensorBoard's writes, with a full or read-only disk one WriteError naming the events file.

  TensorFlow reports the errno as a status: ENOSPC and EDQUOT as RESOURCE_EXHAUSTED, EFBIG as
  OUT_OF_RANGE, EACCES, EPERM and EROFS as PERMISSION_DENIED; its message starts with the file's path.
  """
  try:
    yield
  except (tf.errors.ResourceExhaustedError, tf.errors.OutOfRangeError, tf.errors.PermissionDeniedError) as e:
    line = re.sub(r'^\{\{.*?\}\}\s*', '', e.message.strip().splitlines()[0])  # less {{function_node ...}}
    path, sep, reason = line.partition('; ')
    where = f'to {path}: {reason}' if sep else f'in {workdir}: {path}'
    raise WriteError(f'cannot write TensorBoard events {where}') from None


class _TensorBoard:
  """clu's TensorBoard writer, each of its methods under `_writing_events`."""

  def __init__(self, writer: interface.MetricWriter, workdir: str):
    self._writer, self._workdir = writer, workdir

  def __getattr__(self, name: str):
    method = getattr(self._writer, name)

    def guarded(*args, **kwargs):
      with _writing_events(self._workdir):
        return method(*args, **kwargs)
    return guarded


def create(workdir: str, is_main_process: bool,
           timers: Callable[[], Mapping[str, float]]) -> interface.MetricWriter:
  """TensorBoard events + log lines (+ metrics.jsonl on the main process)."""
  with _writing_events(workdir):
    tensorboard = _TensorBoard(metric_writers.create_default_writer(
        workdir, just_logging=not is_main_process, asynchronous=False), workdir)
  if not is_main_process:
    return tensorboard
  return metric_writers.MultiWriter(
      [tensorboard, JsonlWriter(os.path.join(workdir, METRICS_FILE), timers)])
