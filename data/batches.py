"""Step-indexed batches of in-memory arrays, each process reading only its share.

The batch of step `s` is a pure function of (seed, s), so a resumed run asks for
`start_step` and continues the exact stream, and processes agree on which rows
form the global batch without communicating.
"""

from typing import Iterable, Iterator, Mapping

import numpy as np

Batch = dict[str, np.ndarray]


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def epoch_seed(seed: int, epoch: int) -> int:
  """One epoch's shuffle seed for tf.data and tfds: a pure function of (seed, epoch), as the stream must be."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_batches(arrays: Mapping[str, np.ndarray], global_batch_size: int, seed: int,
                  start_step: int, process_index: int, process_count: int) -> Iterator[Batch]:
  """Endless shuffled batches (a fresh permutation per epoch, remainder dropped)."""
  num_examples = len(next(iter(arrays.values())))
  steps_per_epoch = num_examples // global_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{num_examples} training examples cannot fill one batch of {global_batch_size}')
  mine = process_rows(global_batch_size, process_index, process_count)
  step = start_step
  while True:
    epoch, index = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    rows = order[index * global_batch_size:(index + 1) * global_batch_size][mine]
    yield {name: array[rows] for name, array in arrays.items()}
    step += 1


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


def rebatch(row_chunks: Iterable[Batch], batch_size: int, skip_rows: int = 0) -> Iterator[Batch]:
  """Batches of exactly `batch_size` rows from chunks of any size, less the first `skip_rows`."""
  pending, num_pending = [], 0
  for chunk in row_chunks:
    num_rows = len(next(iter(chunk.values())))
    if skip_rows >= num_rows:
      skip_rows -= num_rows
      continue
    pending.append({key: array[skip_rows:] for key, array in chunk.items()})
    num_pending += num_rows - skip_rows
    skip_rows = 0
    if num_pending < batch_size:
      continue
    rows = {key: np.concatenate([c[key] for c in pending]) for key in chunk}
    num_batches = num_pending // batch_size
    for b in range(num_batches):
      yield {key: array[b * batch_size:(b + 1) * batch_size] for key, array in rows.items()}
    pending = [{key: array[num_batches * batch_size:] for key, array in rows.items()}]
    num_pending -= num_batches * batch_size
