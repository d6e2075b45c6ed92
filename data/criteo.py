"""Criteo click logs (1TB / Kaggle Display Advertising) for DLRM: TSV lines -> batches, and AUC.

Every line is one ad impression, 40 tab-separated fields:

    label \t I1 ... I13 \t C1 ... C26

label is 0 or 1 (clicked); I1..I13 are integer counts (possibly negative, or empty
when missing); C1..C26 are categorical values hashed to 8 hex digits (or empty).
data/synthetic_criteo.py writes the same format from a planted model, so tests and
`tiny` configs run exactly this code.

Layout of a dataset folder (files plain, or gzipped with a .gz name; names starting
with '.' are ignored; files are taken in natural order, day_2 before day_10):

    <dataset_dir>/train/*   Criteo 1TB: day_0 ... day_22 (as MLPerf does)
    <dataset_dir>/eval/*    Criteo 1TB: day_23
                            Kaggle (dac.tar.gz): the first 6/7 of train.txt in train/,
                            the last 1/7 in eval/ (its test.txt has no labels):
                              head -n 39291958 train.txt > train/train.txt
                              tail -n +39291959 train.txt > eval/eval.txt

Preprocessing, as the MLPerf / DLRM reference:

    dense   float32 [rows, 13]  log(1 + max(x, 0)); an empty field is x = 0 (the
                                reference clips negative counts to 0 too)
    sparse  int32 [rows, 26]    modulo hashing into table_sizes[i] rows: an empty field
                                is id 0, a value h (int(hex, 16)) is 1 + h % (size - 1).
                                Unlike the reference, which hashes an empty field as
                                h = 0, row 0 is reserved for "missing".
    label   float32 [rows]      0 or 1

A malformed line (not 40 fields, a count that is not an integer of at most 18
digits, a categorical that is not 8 hex digits, a label other than 0/1) is
skipped and counted, never an error: `ReadStats` holds the counts of a stream, and
each training epoch and evaluation pass logs them (a warning with an example line
when any were skipped).
"""

import dataclasses
import itertools
import os
import re
from typing import Iterator, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: less C++ chatter

import numpy as np
import tensorflow as tf
from absl import logging

from errors import ConfigError
from data import batches, windows

NUM_DENSE, NUM_SPARSE = 13, 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
MISSING_ID = 0  # the id of an empty categorical field, in every table
TRAIN, EVAL = 'train', 'eval'
READ_CHUNK = 4096  # evaluation lines parsed together
WINDOW = 2 ** 17  # training lines shuffled together, on top of shuffling the order of the files
# One regular expression per line checks everything (RE2: linear time), so the rest of
# the parse may assume well-formed fields.
WELL_FORMED = (r'[01]' + rf'(\t(-?[0-9]{{1,18}})?){{{NUM_DENSE}}}'
               + rf'(\t([0-9a-fA-F]{{8}})?){{{NUM_SPARSE}}}')
HEX_PLACES = 16.0 ** np.arange(7, -1, -1)  # of the 8 digits of a categorical

Batch = dict[str, np.ndarray]

tf.config.set_visible_devices([], 'GPU')  # JAX owns the accelerators; TensorFlow only reads files


@dataclasses.dataclass
class ReadStats:
  """What one stream has read so far (ahead of the batches handed out, by the read-ahead)."""
  rows: int = 0  # well-formed lines, turned into rows
  malformed: int = 0  # lines skipped
  example: str = ''  # the first malformed line, cut to 200 characters, for the log

  def _add(self, num_rows: int, malformed: np.ndarray) -> None:
    self.rows += num_rows
    self.malformed += len(malformed)
    if len(malformed) and not self.example:
      self.example = malformed[0].decode(errors='replace')[:200]


# ---- Files.

def _natural_key(name: str) -> list:
  return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def files(dataset_dir: str, split: str) -> list[str]:
  """Paths of the files of `split` (TRAIN or EVAL), in natural name order."""
  folder = os.path.join(dataset_dir, split)
  if not tf.io.gfile.isdir(folder):
    return []
  names = [name.rstrip('/') for name in tf.io.gfile.listdir(folder) if not name.startswith('.')]
  paths = [os.path.join(folder, name) for name in sorted(names, key=_natural_key)]
  return [path for path in paths if not tf.io.gfile.isdir(path)]


def check_prepared(dataset_dir: str) -> None:
  """Fails early, with the way to get the data, rather than deep inside tf.data."""
  empty = [split for split in (TRAIN, EVAL) if not files(dataset_dir, split)]
  if empty:
    raise ConfigError(
        f'no Criteo click logs in {os.path.join(dataset_dir, empty[0])}: download the Criteo 1TB '
        'click logs from https://ailab.criteo.com/download-criteo-1tb-click-logs-dataset/ and put '
        f'day_0 ... day_22 in {dataset_dir}/train and day_23 in {dataset_dir}/eval (plain or .gz), '
        "or take Kaggle's dac.tar.gz and put the first 6/7 of its train.txt in train/ and the last "
        '1/7 in eval/; or use a :tiny config (generates synthetic click logs)')


def check_table_sizes(table_sizes: Sequence[int]) -> None:
  if len(table_sizes) != NUM_SPARSE or not all(2 <= int(size) < 2 ** 31 for size in table_sizes):
    raise ConfigError(f'table_sizes={list(table_sizes)} must be {NUM_SPARSE} sizes in [2, 2**31): '
                      'row 0 of every table is for missing values')


# ---- Parsing.

def _parse(lines: tf.Tensor, table_sizes: tf.Tensor) -> dict[str, tf.Tensor]:
  """A chunk of lines -> the rows of its well-formed lines, and its malformed lines (strings)."""
  well_formed = tf.strings.regex_full_match(lines, WELL_FORMED)
  fields = tf.reshape(tf.strings.split(tf.boolean_mask(lines, well_formed), '\t').values,
                      [-1, NUM_FIELDS])
  counts = fields[:, 1:1 + NUM_DENSE]
  counts = tf.strings.to_number(tf.where(tf.strings.length(counts) == 0, '0', counts), tf.float64)
  hexes = fields[:, 1 + NUM_DENSE:]
  missing = tf.strings.length(hexes) == 0
  chars = tf.cast(tf.io.decode_raw(tf.where(missing, '00000000', hexes), tf.uint8, fixed_length=8),
                  tf.int32)
  # '0'-'9' are 0x30-0x39, 'a'-'f' 0x61-0x66 and 'A'-'F' 0x41-0x46: the low 4 bits, +9 for letters.
  nibbles = tf.bitwise.bitwise_and(chars, 15) + 9 * tf.bitwise.right_shift(chars, 6)
  values = tf.cast(tf.linalg.matvec(tf.cast(nibbles, tf.float64), HEX_PLACES), tf.int64)  # exact < 2**53
  ids = tf.where(missing, tf.constant(MISSING_ID, tf.int64), 1 + values % (table_sizes - 1))
  return {'dense': tf.cast(tf.math.log1p(tf.maximum(counts, 0.0)), tf.float32),
          'sparse': tf.cast(ids, tf.int32),
          'label': tf.cast(fields[:, 0] == '1', tf.float32),
          'malformed': tf.boolean_mask(lines, tf.logical_not(well_formed))}


def _file_lines(path: tf.Tensor, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
  """A file's lines (gzipped if named .gz); with `shard` = (count, index), every count-th from its index-th."""
  compression = tf.where(tf.strings.regex_full_match(path, r'.*\.gz'), 'GZIP', '')
  lines = tf.data.TextLineDataset(path, compression_type=compression)
  return lines.shard(*shard) if shard else lines


def _parsed_chunks(lines: tf.data.Dataset, table_sizes: Sequence[int],
                   stats: ReadStats) -> Iterator[Batch]:
  """Rows of the well-formed lines, READ_CHUNK lines at a time; malformed ones go to `stats`."""
  sizes = tf.constant(table_sizes, tf.int64)
  options = tf.data.Options()
  options.deterministic = True
  chunks = lines.batch(READ_CHUNK).map(lambda chunk: _parse(chunk, sizes),
                                       num_parallel_calls=tf.data.AUTOTUNE)
  for chunk in chunks.prefetch(2).with_options(options).as_numpy_iterator():
    stats._add(len(chunk['label']), chunk.pop('malformed'))
    yield chunk


def _log_pass(what: str, rows: int, malformed: int, stats: ReadStats) -> None:
  if malformed:
    logging.warning('Criteo %s: skipped %d malformed lines (%d rows read), e.g. %r', what,
                    malformed, rows, stats.example)
  else:
    logging.info('Criteo %s: %d rows', what, rows)


# ---- Training.

def _share(paths: list[str], process_index: int, process_count: int):
  """This process's files, and how it shards their lines (None: it reads them whole)."""
  if len(paths) >= process_count:
    return paths[process_index::process_count], None
  return paths, (process_count, process_index)


def _train_windows(paths: list[str], shard: tuple[int, int] | None, table_sizes: Sequence[int],
                   seed: int, start: windows.Position, stats: ReadStats,
                   process: str) -> Iterator[tuple[windows.Position, Batch]]:
  """This process's rows, a window of WINDOW lines at a time, shuffled, from `start`'s window on.

  Each epoch's counts go to the log; an epoch read from its start without one
  well-formed line is an error (the stream would never fill a batch).
  """
  sizes = tf.constant(table_sizes, tf.int64)

  epoch, whole, rows, malformed = start.epoch, start == windows.Position(start.epoch), stats.rows, stats.malformed

  def end_epoch():
    _log_pass(f'train epoch {epoch} ({process})', stats.rows - rows, stats.malformed - malformed, stats)
    if whole and stats.rows == rows:
      raise ConfigError(f'no well-formed training lines for {process} in {paths}')

  for position, window in windows.windows(paths, lambda path: _file_lines(path, shard), WINDOW, seed, start, lambda lines: _parse(lines, sizes)):
    if position.epoch != epoch:
      end_epoch()
      epoch, whole, rows, malformed = position.epoch, True, stats.rows, stats.malformed
    stats._add(len(window['label']), window.pop('malformed'))
    yield position, windows.shuffled(window, seed, position)


def train_batches(dataset_dir: str, table_sizes: Sequence[int], global_batch_size: int, seed: int,
                  start_step: int, process_index: int, process_count: int,
                  stats: ReadStats | None = None, position=None) -> batches.Stream:
  """Endless batches of this process's global_batch_size / process_count rows: dense, sparse, label.

  Each process reads a disjoint share of train/: every process_count-th file, or,
  when there are fewer files than processes, every process_count-th line of each
  file. Its stream is that share epoch after epoch (see data/windows.py): each epoch
  takes the files in an order drawn from (seed, epoch) and shuffles every WINDOW
  consecutive lines; malformed lines are dropped, and every local batch of
  consecutive rows is a step, batches running across epoch ends. So the batch of
  step s is a pure function of (seed, s, process_count). The stream's `position`
  after a batch, given back as `position`, continues it by reading one window;
  without one, resuming at `start_step` replays the lines before it. `stats`, if
  given, counts the lines read.
  """
  check_prepared(dataset_dir)
  check_table_sizes(table_sizes)
  if global_batch_size % process_count:
    raise ConfigError(f'global_batch_size={global_batch_size} must be a multiple of the process '
                      f'count ({process_count})')
  paths, shard = _share(files(dataset_dir, TRAIN), process_index, process_count)
  process, stats = f'process {process_index} of {process_count}', stats or ReadStats()
  return windows.stream(lambda start: _train_windows(paths, shard, table_sizes, seed, start, stats, process),
                        global_batch_size // process_count, start_step, position)


# ---- Evaluation.

def _eval_chunks(dataset_dir: str, table_sizes: Sequence[int], max_examples: int,
                 stats: ReadStats) -> Iterator[Batch]:
  """Rows of eval/ in file order, the first max_examples of them (0: all)."""
  rows, malformed = stats.rows, stats.malformed
  left = max_examples or float('inf')
  lines = tf.data.Dataset.from_tensor_slices(tf.constant(files(dataset_dir, EVAL), tf.string)).flat_map(_file_lines)
  for chunk in _parsed_chunks(lines, table_sizes, stats):
    if len(chunk['label']) >= left:
      yield {key: array[:left] for key, array in chunk.items()}
      break
    left -= len(chunk['label'])
    yield chunk
  _log_pass('eval', stats.rows - rows, stats.malformed - malformed, stats)


def eval_arrays(dataset_dir: str, table_sizes: Sequence[int], max_examples: int = 0,
                stats: ReadStats | None = None) -> Batch:
  """The first max_examples rows (0: all) of eval/ in file order, in memory: for small data only."""
  check_prepared(dataset_dir)
  check_table_sizes(table_sizes)
  chunks = list(_eval_chunks(dataset_dir, table_sizes, max_examples, stats or ReadStats()))
  if not chunks:
    return {'dense': np.zeros((0, NUM_DENSE), np.float32),
            'sparse': np.zeros((0, NUM_SPARSE), np.int32), 'label': np.zeros(0, np.float32)}
  return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}


def _padded(chunks: Iterator[Batch], multiple: int) -> Iterator[Batch]:
  """The chunks with a `weight` of 1, then rows of zeros of weight 0 up to a multiple of `multiple`."""
  total = 0
  for chunk in chunks:
    total += len(chunk['label'])
    yield {**chunk, 'weight': np.ones(len(chunk['label']), np.float32)}
  if total % multiple:
    yield {'dense': np.zeros((-total % multiple, NUM_DENSE), np.float32),
           'sparse': np.zeros((-total % multiple, NUM_SPARSE), np.int32),
           'label': np.zeros(-total % multiple, np.float32),
           'weight': np.zeros(-total % multiple, np.float32)}


def eval_batches(dataset_dir: str, table_sizes: Sequence[int], batch_size: int, process_index: int,
                 process_count: int, max_examples: int = 0,
                 stats: ReadStats | None = None) -> Iterator[Batch]:
  """One streamed pass over eval/ (its first max_examples rows; 0: all), as data.batches.eval_batches.

  Global batches of batch_size consecutive rows in file order, of which this process
  gets rows [i * local, (i + 1) * local) with local = batch_size / process_count;
  every row has a `weight` (1, or 0 on the zeros that pad the last batch). Every
  process parses all of eval/, so all agree on the number of batches however many
  lines are malformed.
  """
  check_prepared(dataset_dir)
  check_table_sizes(table_sizes)
  if batch_size % process_count:
    raise ConfigError(f'eval batch_size={batch_size} must be a multiple of the process count '
                      f'({process_count})')
  mine = batches.process_rows(batch_size, process_index, process_count)
  chunks = _eval_chunks(dataset_dir, table_sizes, max_examples, stats or ReadStats())
  return ({key: array[mine] for key, array in batch.items()}
          for batch in batches.rebatch(_padded(chunks, batch_size), batch_size))


# ---- Metric.

def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
  """Exact ROC AUC: the weighted fraction of (positive, negative) pairs ranked right, ties half.

  O(n log n) by sorting the scores once. Labels are 0/1; weights (default 1) weigh
  examples, so padding with weight 0 changes nothing. NaN when a class has no weight.
  """
  labels = np.asarray(labels, np.float64).ravel()
  scores = np.asarray(scores, np.float64).ravel()
  weights = np.ones_like(labels) if weights is None else np.asarray(weights, np.float64).ravel()
  if not labels.shape == scores.shape == weights.shape:
    raise ValueError(f'labels, scores and weights differ in size: {labels.shape}, {scores.shape}, '
                     f'{weights.shape}')
  if np.isnan(scores).any():
    raise ValueError('scores contain NaN')
  if not len(scores):
    return float('nan')
  order = np.argsort(scores, kind='stable')
  sorted_scores = scores[order]
  tie_group = np.concatenate([[0], np.cumsum(sorted_scores[1:] != sorted_scores[:-1])])
  positive = np.bincount(tie_group, (weights * labels)[order])
  negative = np.bincount(tie_group, (weights * (1 - labels))[order])
  pairs = positive.sum() * negative.sum()
  if pairs == 0:
    return float('nan')
  negative_below = np.cumsum(negative) - negative
  return float(np.sum(positive * (negative_below + 0.5 * negative)) / pairs)
