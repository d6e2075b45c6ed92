"""Step-indexed batches of in-memory arrays, each process reading only its share.

The batch of step `s` is a pure function of (seed, s), so a resumed run asks for
`start_step` and continues the exact stream, and processes agree on which rows
form the global batch without communicating.
"""

import dataclasses
import itertools
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

Batch = dict[str, np.ndarray]


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def epoch_seed(seed: int, epoch: int) -> int:
  """One epoch's shuffle seed for tf.data and tfds: a pure function of (seed, epoch), as the stream must be."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_batches(arrays: Mapping[str, np.ndarray], global_batch_size: int, seed: int,
                  start_step: int, process_index: int, process_count: int) -> 'Stream':
  """Endless shuffled batches (a fresh permutation per epoch, remainder dropped); the step is the position."""
  num_examples = len(next(iter(arrays.values())))
  steps_per_epoch = num_examples // global_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{num_examples} training examples cannot fill one batch of {global_batch_size}')
  mine = process_rows(global_batch_size, process_index, process_count)

  def batches() -> Iterator[tuple[Batch, None]]:
    for step in itertools.count(start_step):
      epoch, index = divmod(step, steps_per_epoch)
      order = np.random.default_rng([seed, epoch]).permutation(num_examples)
      rows = order[index * global_batch_size:(index + 1) * global_batch_size][mine]
      yield {name: array[rows] for name, array in arrays.items()}, None
  return Stream(batches())


def eval_batches(arrays: Mapping[str, np.ndarray], global_batch_size: int,
                 process_index: int, process_count: int) -> Iterator[Batch]:
  """One pass in order; the last batch is padded and every batch carries `weight` (0 = pad)."""
  num_examples = len(next(iter(arrays.values())))
  mine = process_rows(global_batch_size, process_index, process_count)
  for start in range(0, num_examples, global_batch_size):
    rows = np.arange(start, start + global_batch_size)[mine]
    valid = rows < num_examples
    rows = np.where(valid, rows, 0)
    batch = {name: array[rows] for name, array in arrays.items()}
    batch['weight'] = valid.astype(np.float32)
    yield batch


def rebatch(row_chunks: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
  """Batches of exactly `batch_size` rows from chunks of any size (the rows left over are dropped)."""
  return (batch for batch, _ in rebatch_positioned(((None, chunk) for chunk in row_chunks), batch_size))


def rebatch_positioned(chunks: Iterable[tuple[Any, Batch]], batch_size: int) -> Iterator[tuple[Batch, Any]]:
  """(batch of exactly `batch_size` rows, position of the row after it) from (position, chunk) pairs.

  A chunk's position is that of its first row: a dataclass with a `row` field, which
  advances by the rows handed out of the chunk (None positions stay None).
  """
  pending: list[tuple[Any, Batch]] = []  # rows not handed out yet, in stream order
  num_pending, last = 0, None  # `last`: the position after the newest chunk's rows
  for position, chunk in chunks:
    num_rows = len(next(iter(chunk.values())))
    last = _advanced(position, num_rows)
    if num_rows:
      pending.append((position, chunk))
      num_pending += num_rows
    while num_pending >= batch_size:
      parts, needed = [], batch_size
      while needed:
        front_position, front = pending[0]
        front_rows = len(next(iter(front.values())))
        take = min(needed, front_rows)
        parts.append({key: array[:take] for key, array in front.items()})
        if take == front_rows:
          pending.pop(0)
        else:
          pending[0] = (_advanced(front_position, take), {key: array[take:] for key, array in front.items()})
        needed -= take
      num_pending -= batch_size
      batch = parts[0] if len(parts) == 1 else {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
      yield batch, pending[0][0] if pending else last


def _advanced(position, rows: int):
  return None if position is None else dataclasses.replace(position, row=position.row + rows)


class Stream:
  """Training batches that say where they stand: `position`, after the batch last handed out.

  A reader given that position back continues the exact stream from there, at the cost of
  reading one window, where replaying from the step would read everything before it.
  Positions are JSON values; None (in-memory data) says the step alone is enough.
  """

  def __init__(self, items: Iterator[tuple[Batch, Any]]):
    self._items = items
    self.position = None

  def __iter__(self) -> 'Stream':
    return self

  def __next__(self) -> Batch:
    batch, self.position = next(self._items)
    return batch
