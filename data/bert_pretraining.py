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

import itertools
import json
import os
from typing import Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: less C++ chatter

import numpy as np
import tensorflow as tf

from errors import ConfigError
from data import batches

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
FEATURES = ('input_ids', 'input_mask', 'segment_ids', 'masked_lm_positions', 'masked_lm_ids',
            'masked_lm_weights', 'next_sentence_labels')
PREPARED, TOKENIZER = 'prepared.json', 'spm.model'
EVAL_FILE = 'eval-00000-of-00001.tfrecord'
SHUFFLE_BUFFER = 2 ** 14  # serialized examples, on top of shuffling the order of the files
PARALLEL_READS = 4  # files read at once (interleaved in a fixed order)
READ_CHUNK = 1024  # examples parsed together

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


def _parsed_chunks(records: tf.data.Dataset, prepared: dict) -> Iterator[Batch]:
  """Serialized examples -> dicts of int32 arrays, READ_CHUNK rows at a time; labels are [rows]."""
  spec = _feature_spec(prepared['max_seq_length'], prepared['max_predictions_per_seq'])

  def parse(serialized):
    features = tf.io.parse_example(serialized, spec)
    features['next_sentence_labels'] = tf.reshape(features['next_sentence_labels'], [-1])
    return {name: tf.cast(features[name], tf.int32) for name in FEATURES}

  options = tf.data.Options()
  options.deterministic = True
  chunks = records.batch(READ_CHUNK).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  yield from chunks.prefetch(2).with_options(options).as_numpy_iterator()


def eval_arrays(data_dir: str) -> Batch:
  """The whole eval split, in stored order (batch it with data.batches.eval_batches)."""
  prepared = info(data_dir)
  chunks = list(_parsed_chunks(tf.data.TFRecordDataset(os.path.join(data_dir, EVAL_FILE)), prepared))
  return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in FEATURES}


def _train_files(prepared: dict) -> list[str]:
  return sorted(name for name in prepared['examples_per_file'] if name.startswith('train-'))


def _share(prepared: dict, process_index: int, process_count: int) -> tuple[list[str], bool, int]:
  """This process's training files, whether it keeps only every process_count-th of their records
  (when there are fewer files than processes), and how many examples that leaves it per epoch."""
  files = _train_files(prepared)
  counts = prepared['examples_per_file']
  if len(files) >= process_count:
    mine = files[process_index::process_count]
    return mine, False, sum(counts[name] for name in mine)
  total = sum(counts[name] for name in files)
  return files, True, len(range(process_index, total, process_count))


def examples_per_epoch(data_dir: str, process_index: int, process_count: int) -> int:
  """Training examples in this process's share: one epoch of its stream."""
  return _share(info(data_dir), process_index, process_count)[2]


def _epoch_records(data_dir: str, files: list[str], shard_records: bool, seed: int, epoch: int,
                   skip: int, process_index: int, process_count: int) -> tf.data.Dataset:
  """This process's serialized examples of one epoch, shuffled from (seed, epoch), less the first `skip`."""
  order = np.random.default_rng([seed, epoch]).permutation(len(files))
  paths = [os.path.join(data_dir, files[i]) for i in order]
  records = tf.data.TFRecordDataset(paths, num_parallel_reads=min(PARALLEL_READS, len(paths)))
  if shard_records:  # every process reads the same files in the same order and keeps its share
    records = records.shard(process_count, process_index)
  # An op seed alone fixes the order while TensorFlow's global seed is unset (nothing here sets it).
  return records.shuffle(SHUFFLE_BUFFER, seed=batches.epoch_seed(seed, epoch)).skip(skip)


def train_batches(data_dir: str, global_batch_size: int, seed: int, start_step: int,
                  process_index: int, process_count: int) -> Iterator[Batch]:
  """Endless batches of this process's global_batch_size / process_count rows: int32 FEATURES.

  Each process reads a disjoint share: every process_count-th training file, or, when
  there are fewer files than processes, every process_count-th record of all of them.
  Its stream is that share epoch after epoch, each epoch reshuffled from (seed, epoch)
  (file order, then a buffer of SHUFFLE_BUFFER examples) with deterministic tf.data,
  and every local batch of consecutive rows is a step; batches run across epoch ends.
  So the batch of step s is a pure function of (seed, s, process_count), and resuming
  at `start_step` skips whole epochs without reading them, then the rest of one.
  """
  if global_batch_size % process_count:
    raise ConfigError(f'global_batch_size={global_batch_size} must be a multiple of the process '
                      f'count ({process_count})')
  prepared = info(data_dir)
  files, shard_records, epoch_size = _share(prepared, process_index, process_count)
  if not epoch_size:
    raise ConfigError(f'{data_dir}: no training examples for process {process_index} of {process_count}')
  rows = global_batch_size // process_count
  first_epoch, skip = divmod(start_step * rows, epoch_size)
  chunks = (chunk
            for epoch in itertools.count(first_epoch)
            for chunk in _parsed_chunks(
                _epoch_records(data_dir, files, shard_records, seed, epoch,
                               skip if epoch == first_epoch else 0, process_index, process_count),
                prepared))
  return batches.rebatch(chunks, rows)

