"""Shuffled epochs over files of records that a resumed run enters by seeking, not by replaying.

An epoch reads a stream's files in an order drawn from (seed, epoch) and cuts their records,
in that order, into windows of `window_size` consecutive records; a reader shuffles each
window's rows from (seed, epoch, window) (`shuffled`). A window is read whole or not at
all, and where it starts (file, record) is known once it is read, so a `Position` -- the
window, where it starts, and how many of its rows were handed out -- continues the exact
stream: open that file, skip to that record, read one window. Resuming costs at most one
file's records skipped plus one window, whatever the step; replaying from a step
(`stream` without a position) is the way when no position was kept.

The shuffle is in two levels, as a shuffle buffer is, but seekable: files move anywhere in
an epoch, records within a window. Files that are themselves shuffled (prepared BERT and
tfds shards) mix fully; a file ordered by time (a Criteo day) mixes within windows.
"""

import dataclasses
import itertools
import queue
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from errors import ConfigError
from data import batches

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a stream stands: the next row is row `row` of window `window` of epoch `epoch`, which
  starts at record `record` of the `file`-th file in the epoch's order."""
  epoch: int = 0
  window: int = 0
  file: int = 0
  record: int = 0
  row: int = 0

  @classmethod
  def from_json(cls, value: Any) -> 'Position':
    fields = [field.name for field in dataclasses.fields(cls)]
    if (not isinstance(value, dict) or sorted(value) != sorted(fields)
        or not all(isinstance(value[k], int) and value[k] >= 0 for k in fields)):
      raise ConfigError(f'data position {value!r} is not one of this reader\'s: want {{{", ".join(fields)}}} '
                        'of non-negative integers')
    return cls(**value)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def file_order(num_files: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_files)


def locate(counts: Sequence[int], record: int) -> tuple[int, int]:
  """(file, record within it) of the `record`-th record of files holding `counts` records, in order."""
  ends = np.cumsum(counts)
  file = int(np.searchsorted(ends, record, side='right'))
  return file, record - int(ends[file - 1] if file else 0)


def shuffled(window: Batch, seed: int, position: Position) -> Batch:
  """A window's rows in the order drawn from (seed, epoch, window), the same for every array."""
  order = np.random.default_rng([seed, position.epoch, position.window]).permutation(
      len(next(iter(window.values()))))
  return {name: rows[order] for name, rows in window.items()}


def epoch_windows(paths: Sequence[str], ranges: Sequence[tuple[int, int]],
                   read_file: Callable[[tf.Tensor], tf.data.Dataset], start: Position,
                   window_size: int) -> tf.data.Dataset:
  """{'records', 'file', 'record'} of each window of one epoch from `start`, records unshuffled."""
  first_file, first_record = start.file, tf.constant(start.record, tf.int64)

  def tagged(index, path, skip, take):
    records = read_file(path).skip(skip).take(take).enumerate()
    records = records.skip(tf.where(index == first_file, first_record, tf.constant(0, tf.int64)))
    return records.map(lambda record, value: (index, record, value))

  skips, takes = zip(*ranges[first_file:]) if len(ranges) > first_file else ((), ())
  files = tf.data.Dataset.from_tensor_slices(
      (tf.range(first_file, len(paths), dtype=tf.int64), tf.constant(list(paths[first_file:]), tf.string),
       tf.constant(skips, tf.int64), tf.constant(takes, tf.int64)))
  return files.flat_map(tagged).batch(window_size).map(
      lambda index, record, values: {'file': index[0], 'record': record[0], 'records': values})


def windows(paths: Sequence[str], read_file: Callable[[tf.Tensor], tf.data.Dataset], window_size: int,
            seed: int, start: Position, parse: Callable[[tf.Tensor], dict[str, tf.Tensor]],
            ranges: Sequence[tuple[int, int]] | None = None) -> Iterator[tuple[Position, Batch]]:
  """(where each window starts, its records parsed), from `start`'s window on, epoch after epoch.

  `read_file(path)` is a file's records (a tf.data.Dataset of strings), of which the stream
  takes `ranges[i]` = (skip, take) of paths[i] (take -1: to the end; default: all of each);
  `parse` maps a window's records to a dict of arrays, in tf.data, windows in parallel and
  in order. Rows come unshuffled: the reader shuffles them with `shuffled`.
  """
  ranges = list(ranges or [(0, -1)] * len(paths))
  options = tf.data.Options()
  options.deterministic = True
  for epoch in itertools.count(start.epoch):
    first = start if epoch == start.epoch else Position(epoch=epoch)
    order = file_order(len(paths), seed, epoch)
    parsed = epoch_windows([paths[i] for i in order], [ranges[i] for i in order], read_file, first,
                            window_size).map(
        lambda window: {**parse(window['records']), 'file': window['file'], 'record': window['record']},
        num_parallel_calls=tf.data.AUTOTUNE)
    read = False
    for index, window in enumerate(parsed.prefetch(2).with_options(options).as_numpy_iterator(),
                                   start=first.window):
      read = True
      yield Position(epoch, index, int(window.pop('file')), int(window.pop('record'))), window
    if not read and first == Position(epoch=epoch):
      raise ConfigError(f'no records in {list(paths)[:3]}{"..." if len(paths) > 3 else ""}')


def _from_position(start: Position, chunks: Iterator[tuple[Position, Batch]]) -> Iterator[tuple[Position, Batch]]:
  """The rows of `chunks` (the reader's windows from `start`'s on) from `start.row` of its window on."""
  first_position, first = next(chunks)
  skip = start.row
  yield dataclasses.replace(first_position, row=skip), {key: rows[skip:] for key, rows in first.items()}
  yield from chunks


def stream(read: Callable[[Position], Iterator[tuple[Position, Batch]]], rows: int, start_step: int,
           position: Any = None) -> batches.Stream:
  """Batches of `rows` rows from the windows `read(start)` yields: from the kept `position` (JSON)
  when there is one, else replayed from the stream's start to `start_step`."""
  if position is None:
    chunks = _skip_rows(start_step * rows, read(Position()))
  else:
    start = Position.from_json(position)
    chunks = _from_position(start, read(start))
  return batches.Stream((batch, after.to_json())
                        for batch, after in batches.rebatch_positioned(_ahead(chunks), rows))


def _ahead(chunks: Iterator, depth: int = 2) -> Iterator:
  """`chunks`, made up to `depth` ahead in a thread: a window's work in Python (WMT's encoding and
  packing) comes at once, and done while the batches of the window before are handed out it
  never stalls them. Errors are raised where their chunk would have been; the thread ends when
  the stream is closed or dropped."""
  ready, stop = queue.Queue(maxsize=depth), threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def fill():
    try:
      for chunk in chunks:
        if not put((chunk, None)):
          return
      put((None, StopIteration()))
    except BaseException as e:  # noqa: BLE001 -- raised again in the consumer's thread
      put((None, e))

  threading.Thread(target=fill, daemon=True, name='windows').start()
  try:
    while True:
      chunk, error = ready.get()
      if isinstance(error, StopIteration):
        return
      if error is not None:
        raise error
      yield chunk
  finally:
    stop.set()


def _skip_rows(count: int, chunks: Iterator[tuple[Position, Batch]]) -> Iterator[tuple[Position, Batch]]:
  """The rows of `chunks` after the first `count`: replaying the stream, when no position was kept."""
  for position, rows in chunks:
    num_rows = len(next(iter(rows.values())))
    if count >= num_rows:
      count -= num_rows
      continue
    yield dataclasses.replace(position, row=position.row + count), {key: r[count:] for key, r in rows.items()}
    count = 0


def tfds_files(builder, split) -> tuple[list[str], list[tuple[int, int]]]:
  """The record files of a prepared tfds `split` (a slice too) and the (skip, take) of each, for `windows`."""
  instructions = builder.info.splits[split].file_instructions
  return ([i.filename for i in instructions],
          [(i.skip, i.take if i.take >= 0 else i.examples_in_shard - i.skip) for i in instructions])
