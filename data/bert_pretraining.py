"""BERT pre-training data in the original BERT / MLPerf TFRecord format, and its reader.

`python -m data.prepare_bert` makes it from raw text; a prepared DIR holds:

    train-00000-of-000NN.tfrecord ...   training examples, shuffled, spread round-robin
    eval-00000-of-00001.tfrecord        examples of the held-out documents
    spm.model                           the tokenizer
    prepared.json                       lengths, vocabulary size, counts and settings

Every example holds the original's features (all int64 but masked_lm_weights, a
float, so existing BERT / MLPerf files read the same):

    input_ids [max_seq_length]     [CLS] A [SEP] B [SEP], then PAD_ID; masked tokens replaced
    input_mask                     1 on tokens, 0 on padding
    segment_ids                    0 on [CLS] A [SEP], 1 on B [SEP], 0 on padding
    masked_lm_positions [max_predictions_per_seq]   sorted positions of the predicted
    masked_lm_ids                  tokens and their original ids, padded with 0
    masked_lm_weights              1 on predictions, 0 on padding
    next_sentence_labels [1]       1: B is a random sentence, 0: B follows A (the original's)

Special ids: PAD_ID=0, UNK_ID=1, CLS_ID=2, SEP_ID=3, MASK_ID=4; all ids < vocab_size.
The reader gives each process its share of the training examples as step-indexed
batches (see train_batches) and the eval split as arrays.
"""

import json
import os
from typing import Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: less C++ chatter

import numpy as np
import tensorflow as tf

from errors import ConfigError
from data import batches, windows

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
FEATURES = ('input_ids', 'input_mask', 'segment_ids', 'masked_lm_positions', 'masked_lm_ids',
            'masked_lm_weights', 'next_sentence_labels')
PREPARED, TOKENIZER = 'prepared.json', 'spm.model'
EVAL_FILE = 'eval-00000-of-00001.tfrecord'
WINDOW = 2 ** 14  # training examples shuffled together, on top of shuffling the order of the files
READ_CHUNK = 1024  # evaluation examples parsed together

Batch = dict[str, np.ndarray]

tf.config.set_visible_devices([], 'GPU')  # JAX owns the accelerators; TensorFlow only reads files


def is_prepared(data_dir: str) -> bool:
  """prepared.json is written last, inside a folder renamed into place: if it is there, all is."""
  return tf.io.gfile.exists(os.path.join(data_dir, PREPARED))


def _how_to_prepare(data_dir: str, max_seq_length: int, max_predictions_per_seq: int) -> str:
  return (f'run "python -m data.prepare_bert --input=\'<text>/*.txt\' --output_dir={data_dir} '
          f'--max_seq_length={max_seq_length} --max_predictions_per_seq={max_predictions_per_seq}" '
          'once on Wikipedia/BooksCorpus text (one sentence per line, a blank line between '
          'documents), or use a :tiny config (generates a synthetic corpus)')


def check_prepared(data_dir: str, max_seq_length: int, max_predictions_per_seq: int) -> None:
  """Fails early, with the way to get the data, rather than deep inside tf.data."""
  if not is_prepared(data_dir):
    raise ConfigError(f'no prepared BERT pre-training data in {data_dir}: '
                      + _how_to_prepare(data_dir, max_seq_length, max_predictions_per_seq))
  prepared = info(data_dir)
  lengths = prepared['max_seq_length'], prepared['max_predictions_per_seq']
  if lengths != (max_seq_length, max_predictions_per_seq):
    raise ConfigError(
        f'{data_dir} was prepared with max_seq_length={lengths[0]}, max_predictions_per_seq='
        f'{lengths[1]}, not {max_seq_length} and {max_predictions_per_seq}: point the run at data '
        f'of those lengths, or prepare it into another folder: '
        + _how_to_prepare('<new folder>', max_seq_length, max_predictions_per_seq))


def info(data_dir: str) -> dict:
  """The preparation's prepared.json.

  max_seq_length, max_predictions_per_seq; vocab_size: the tokenizer's pieces (every
  id is below it; the requested bound is settings['vocab_size']); examples and
  documents per split; examples_per_file; settings: what the preparation was given.
  """
  with tf.io.gfile.GFile(os.path.join(data_dir, PREPARED)) as f:
    return json.load(f)


def _feature_spec(max_seq_length: int, max_predictions_per_seq: int) -> dict:
  tokens = tf.io.FixedLenFeature([max_seq_length], tf.int64)
  predictions = tf.io.FixedLenFeature([max_predictions_per_seq], tf.int64)
  return {'input_ids': tokens, 'input_mask': tokens, 'segment_ids': tokens,
          'masked_lm_positions': predictions, 'masked_lm_ids': predictions,
          'masked_lm_weights': tf.io.FixedLenFeature([max_predictions_per_seq], tf.float32),
          'next_sentence_labels': tf.io.FixedLenFeature([1], tf.int64)}


def _parser(prepared: dict):
  """Serialized examples -> a dict of int32 tensors of FEATURES; labels are [rows]."""
  spec = _feature_spec(prepared['max_seq_length'], prepared['max_predictions_per_seq'])

  def parse(serialized):
    features = tf.io.parse_example(serialized, spec)
    features['next_sentence_labels'] = tf.reshape(features['next_sentence_labels'], [-1])
    return {name: tf.cast(features[name], tf.int32) for name in FEATURES}
  return parse


def eval_arrays(data_dir: str) -> Batch:
  """The whole eval split, in stored order (batch it with data.batches.eval_batches)."""
  records = tf.data.TFRecordDataset(os.path.join(data_dir, EVAL_FILE)).batch(READ_CHUNK)
  chunks = list(records.map(_parser(info(data_dir))).as_numpy_iterator())
  return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in FEATURES}


def _train_files(prepared: dict) -> list[str]:
  return sorted(name for name in prepared['examples_per_file'] if name.startswith('train-'))


def _share(prepared: dict, process_index: int, process_count: int
           ) -> tuple[list[str], tuple[int, int] | None, int]:
  """This process's training files, how it shards their records (None: it reads them whole, else
  (count, index): every count-th record of each file from its index-th, when there are fewer
  files than processes), and how many examples that leaves it per epoch."""
  files = _train_files(prepared)
  counts = prepared['examples_per_file']
  if len(files) >= process_count:
    mine = files[process_index::process_count]
    return mine, None, sum(counts[name] for name in mine)
  return files, (process_count, process_index), sum(len(range(process_index, counts[name], process_count))
                                                      for name in files)


def examples_per_epoch(data_dir: str, process_index: int, process_count: int) -> int:
  """Training examples in this process's share: one epoch of its stream."""
  return _share(info(data_dir), process_index, process_count)[2]


def _train_windows(data_dir: str, files: list[str], shard: tuple[int, int] | None, prepared: dict, seed: int,
                   start: windows.Position) -> Iterator[tuple[windows.Position, Batch]]:
  """This process's examples, a window of WINDOW at a time, shuffled, from `start`'s window on."""
  def read(path):
    records = tf.data.TFRecordDataset(path)
    return records.shard(*shard) if shard else records

  paths = [os.path.join(data_dir, name) for name in files]
  for position, window in windows.windows(paths, read, WINDOW, seed, start, _parser(prepared)):
    yield position, windows.shuffled(window, seed, position)


def train_batches(data_dir: str, global_batch_size: int, seed: int, start_step: int,
                  process_index: int, process_count: int, position=None) -> batches.Stream:
  """Endless batches of this process's global_batch_size / process_count rows: int32 FEATURES.

  Each process reads a disjoint share: every process_count-th training file, or, when
  there are fewer files than processes, every process_count-th record of each file.
  Its stream is that share epoch after epoch (see data/windows.py): each epoch takes
  the files in an order drawn from (seed, epoch) and shuffles every WINDOW consecutive
  examples, and every local batch of consecutive rows is a step; batches run across
  epoch ends. So the batch of step s is a pure function of (seed, s, process_count).
  The stream's `position` after a batch, given back as `position`, continues it by
  reading one window; without one, resuming at `start_step` replays the examples before it.
  """
  if global_batch_size % process_count:
    raise ConfigError(f'global_batch_size={global_batch_size} must be a multiple of the process '
                      f'count ({process_count})')
  prepared = info(data_dir)
  files, shard, epoch_size = _share(prepared, process_index, process_count)
  if not epoch_size:
    raise ConfigError(f'{data_dir}: no training examples for process {process_index} of {process_count}')
  return windows.stream(lambda start: _train_windows(data_dir, files, shard, prepared, seed, start),
                        global_batch_size // process_count, start_step, position)
