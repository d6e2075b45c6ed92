"""WMT'14 English -> French via tensorflow-datasets: one shared sentencepiece vocabulary, packed rows.

The data is the prepared tfds dataset `wmt14_translate/fr-en` ('en' is the
source, 'fr' the target); data/synthetic_translation.py writes a small corpus in
the same on-disk form, so tests and `tiny` configs run exactly this code.

Every batch is a dict of int32 arrays [rows, max_length]:

    inputs, targets            token ids, 0 = padding; every sentence ends with EOS_ID
    inputs_segmentation,       1, 2, 3, ... for the pairs packed in a row, 0 on padding;
    targets_segmentation       a pair's source and target have the same number
    inputs_position,           position within the pair's own sentence, 0 on padding
    targets_position

Training rows pack several pairs; evaluation and decoding rows hold one each.
"""

import functools
import io
import itertools
import os
import tempfile
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
import tensorflow as tf
import tensorflow_datasets as tfds

from errors import ConfigError
from data import batches, windows

DATASET = 'wmt14_translate/fr-en'
EVAL_SPLIT = 'test'  # newstest2014
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SHUFFLE_BUFFER = 2 ** 17  # pairs the tokenizer's training sample is drawn from
READ_CHUNK = 2048  # pairs read and decoded together
WINDOW = 2 ** 15  # training pairs shuffled and packed together, on top of shuffling the order of the files

Batch = dict[str, np.ndarray]

tf.config.set_visible_devices([], 'GPU')  # JAX owns the accelerators; TensorFlow only reads files


def dataset_dir(data_dir: str) -> str:
  return os.path.join(data_dir, *DATASET.split('/'))


def is_prepared(data_dir: str) -> bool:
  return tfds.builder(DATASET, data_dir=data_dir).is_prepared()


def check_prepared(data_dir: str) -> None:
  """Fails early, with the way to get the data, rather than deep inside tfds."""
  if not is_prepared(data_dir):
    raise ConfigError(
        f'no prepared tfds dataset {DATASET} in {data_dir}: run '
        f'"tfds build {DATASET} --data_dir={data_dir}" (downloads ~7 GB), point '
        '--config.task.tfds_dir at a tfds data_dir that has it, or use a :tiny config '
        '(generates a synthetic corpus)')


def _read(data_dir: str, split: tfds.typing.SplitArg,
          shuffle_seed: int | None = None) -> tf.data.Dataset:
  """Pairs of `split` in stored order, or shuffled (files, then a buffer) by `shuffle_seed`."""
  builder = tfds.builder(DATASET, data_dir=data_dir)
  if shuffle_seed is None:
    return builder.as_dataset(split=split, shuffle_files=False)
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
  pairs = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config)
  return pairs.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed)


def _text_chunks(pairs: tf.data.Dataset) -> Iterator[tuple[list[str], list[str]]]:
  """(English, French) sentences, READ_CHUNK pairs at a time."""
  for chunk in pairs.batch(READ_CHUNK).prefetch(2).as_numpy_iterator():
    yield [s.decode() for s in chunk['en']], [s.decode() for s in chunk['fr']]


def read_split(data_dir: str, split: str) -> tuple[list[str], list[str]]:
  """All (English, French) sentences of `split` ('test', 'train[:50%]', ...), in stored order."""
  english, french = [], []
  for en, fr in _text_chunks(_read(data_dir, split)):
    english += en
    french += fr
  return english, french


def tokenizer_path(data_dir: str, vocab_size: int) -> str:
  return os.path.join(dataset_dir(data_dir), f'spm_{vocab_size}.model')


def load_tokenizer(data_dir: str, vocab_size: int,
                   max_train_pairs: int = 1_000_000) -> spm.SentencePieceProcessor:
  """The shared English/French vocabulary, trained once on the train split, cached next to the data.

  Unigram sentencepiece (its default, and what T5 and Lingvo use for WMT) on both
  sides of up to `max_train_pairs` pairs, drawn with a fixed seed. `vocab_size` is an
  upper bound (hard_vocab_limit=False): a tiny corpus may not have that many pieces
  to offer, and all ids stay below it. Ids: PAD_ID, EOS_ID, UNK_ID, no BOS.

  The model is trained in memory and hard-linked into place, so a crash never
  leaves half a file, and when processes train concurrently the first file wins and
  everyone loads that one.
  """
  path = tokenizer_path(data_dir, vocab_size)
  if not os.path.exists(path):
    check_prepared(data_dir)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_sentences(data_dir, max_train_pairs), model_writer=model,
        vocab_size=vocab_size, hard_vocab_limit=False, model_type='unigram',
        character_coverage=0.9999, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        num_threads=os.cpu_count(), minloglevel=2)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), prefix='.spm-') as staging:
      staging.write(model.getvalue())
      staging.flush()
      try:
        os.link(staging.name, path)
      except FileExistsError:  # another process finished first
        pass
  return spm.SentencePieceProcessor(model_file=path)


def _training_sentences(data_dir: str, max_train_pairs: int) -> Iterator[str]:
  pairs = _read(data_dir, 'train', shuffle_seed=0).take(max_train_pairs)
  for english, french in _text_chunks(pairs):
    for pair in zip(english, french):
      yield from pair


def encode(tokenizer: spm.SentencePieceProcessor, sentences: list[str]) -> list[list[int]]:
  """Token ids of each sentence, ending with EOS_ID."""
  return tokenizer.encode(sentences, add_eos=True, num_threads=os.cpu_count())


def decode_ids(tokenizer: spm.SentencePieceProcessor, ids: Sequence[int]) -> str:
  """The text of a model's output row: everything before the first EOS_ID or padding."""
  ids = np.asarray(ids).tolist()
  end = next((i for i, token in enumerate(ids) if token in (EOS_ID, PAD_ID)), len(ids))
  return tokenizer.decode(ids[:end])


def assign_rows(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                max_length: int) -> np.ndarray:
  """The row of each pair as pairs fill rows in order, a new row whenever either side would overflow."""
  rows = np.empty(len(inputs), np.int64)
  row = used_inputs = used_targets = 0
  for i, (input_length, target_length) in enumerate(zip(map(len, inputs), map(len, targets))):
    if used_inputs + input_length > max_length or used_targets + target_length > max_length:
      row, used_inputs, used_targets = row + 1, 0, 0
    used_inputs += input_length
    used_targets += target_length
    rows[i] = row
  return rows


def _fill(name: str, sentences: Sequence[Sequence[int]], rows: np.ndarray, max_length: int) -> Batch:
  """`name`, `name`_segmentation and `name`_position of sentences put in `rows` (0, 0, 1, ...)."""
  num_rows = int(rows[-1]) + 1
  lengths = np.fromiter(map(len, sentences), np.int64, len(sentences))
  ends = np.cumsum(lengths)
  starts = ends - lengths
  first_in_row = np.searchsorted(rows, rows)  # index of the first sentence of each sentence's row
  token_sentence = np.repeat(np.arange(len(sentences)), lengths)
  position = np.arange(ends[-1]) - starts[token_sentence]
  row = rows[token_sentence]
  column = (starts - starts[first_in_row])[token_sentence] + position
  arrays = {key: np.zeros((num_rows, max_length), np.int32)
            for key in (name, f'{name}_segmentation', f'{name}_position')}
  tokens = np.fromiter(itertools.chain.from_iterable(sentences), np.int32, ends[-1])
  segment = np.arange(len(sentences)) - first_in_row + 1
  arrays[name][row, column] = tokens
  arrays[f'{name}_segmentation'][row, column] = segment[token_sentence]
  arrays[f'{name}_position'][row, column] = position
  return arrays


def pack(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], max_length: int) -> Batch:
  """Pairs that fit max_length packed into rows in order: each pair goes into the open row if
  both its sides fit in what that row has left, else into a new row."""
  rows = assign_rows(inputs, targets, max_length)
  return {**_fill('inputs', inputs, rows, max_length), **_fill('targets', targets, rows, max_length)}


def _train_windows(data_dir: str, tokenizer: spm.SentencePieceProcessor, max_length: int, seed: int,
                   shard_index: int, num_shards: int, start: windows.Position
                   ) -> Iterator[tuple[windows.Position, Batch]]:
  """One shard's packed rows, a window of WINDOW pairs at a time, from `start`'s window on.

  A window's pairs are shuffled, encoded, those with a side over max_length dropped, and
  the rest packed: rows never span windows, so a window's rows depend on it alone.
  """
  builder = tfds.builder(DATASET, data_dir=data_dir)
  paths, ranges = windows.tfds_files(
      builder, tfds.split_for_jax_process('train', process_index=shard_index, process_count=num_shards))
  spec = {side: tf.io.FixedLenFeature([], tf.string) for side in ('en', 'fr')}
  epoch, whole, kept = start.epoch, start == windows.Position(start.epoch), 0
  for position, window in windows.windows(paths, tf.data.TFRecordDataset, WINDOW, seed, start,
                                          lambda records: tf.io.parse_example(records, spec), ranges):
    if position.epoch != epoch:
      if whole and not kept:
        raise ConfigError(f'max_length={max_length}: no pair of the training shard fits (tokens per side)')
      epoch, whole, kept = position.epoch, True, 0
    window = windows.shuffled(window, seed, position)
    inputs = encode(tokenizer, [sentence.decode() for sentence in window['en']])
    targets = encode(tokenizer, [sentence.decode() for sentence in window['fr']])
    fits = [i for i, (source, target) in enumerate(zip(inputs, targets))
            if len(source) <= max_length and len(target) <= max_length]
    kept += len(fits)
    if fits:  # a window without rows is passed over: no position ever points into it
      yield position, pack([inputs[i] for i in fits], [targets[i] for i in fits], max_length)


def train_batches(data_dir: str, tokenizer: spm.SentencePieceProcessor, global_batch_size: int,
                  max_length: int, seed: int, start_step: int, process_index: int,
                  process_count: int, num_shards: int = 0, position=None) -> batches.Stream:
  """Endless packed batches: this process's rows of each global batch of the train split.

  The split is cut into `num_shards` even slices (0: one per process), each its own
  stream: its pairs, epoch after epoch (see data/windows.py), each epoch taking the
  files in an order drawn from (seed, epoch) and shuffling every WINDOW consecutive
  pairs; pairs with a side longer than max_length tokens (EOS included) are dropped,
  the rest packed within their window (see `pack`), and every global_batch_size /
  num_shards consecutive rows are that stream's part of a step. A process reads only
  its num_shards / process_count streams and stacks their parts. So the batch of step
  s is a pure function of (seed, s, num_shards): with a fixed num_shards the same
  global batches reach the model whatever the number of processes. The stream's
  `position` after a batch (one per shard), given back as `position`, continues it by
  reading one window per shard; without one, resuming at `start_step` re-reads,
  tokenizes and packs each shard from its start.
  """
  num_shards = num_shards or process_count
  if num_shards % process_count or global_batch_size % num_shards:
    raise ConfigError(f'train_shards={num_shards} must be a multiple of the process count '
                      f'({process_count}) and divide global_batch_size={global_batch_size}')
  rows = global_batch_size // num_shards
  mine = range(process_index * (num_shards // process_count), (process_index + 1) * (num_shards // process_count))
  if position is not None and (not isinstance(position, list) or len(position) != len(mine)):
    raise ConfigError(f'data position {position!r} is not one of this reader\'s: want a list of '
                      f'{len(mine)} shard positions')
  streams = [windows.stream(functools.partial(_train_windows, data_dir, tokenizer, max_length, seed, shard,
                                              num_shards),
                            rows, start_step, None if position is None else position[i])
             for i, shard in enumerate(mine)]

  def stacked() -> Iterator[tuple[Batch, list]]:
    for parts in zip(*streams):
      yield ({key: np.concatenate([part[key] for part in parts]) for key in parts[0]},
             [stream.position for stream in streams])
  return batches.Stream(stacked())


def _truncate(sentences: list[list[int]], max_length: int) -> list[list[int]]:
  """Sentences cut to max_length tokens, the last one still EOS_ID so every example ends."""
  return [s if len(s) <= max_length else s[:max_length - 1] + [EOS_ID] for s in sentences]


def _one_per_row(name: str, sentences: list[list[int]], max_length: int) -> Batch:
  return _fill(name, _truncate(sentences, max_length), np.arange(len(sentences)), max_length)


def eval_arrays(data_dir: str, tokenizer: spm.SentencePieceProcessor, max_length: int) -> Batch:
  """Every pair of EVAL_SPLIT, one per row in stored order, long sentences truncated (see `_truncate`).

  Batch them with data.batches.eval_batches.
  """
  english, french = read_split(data_dir, EVAL_SPLIT)
  return {**_one_per_row('inputs', encode(tokenizer, english), max_length),
          **_one_per_row('targets', encode(tokenizer, french), max_length)}


def decode_arrays(data_dir: str, tokenizer: spm.SentencePieceProcessor, max_length: int,
                  num_sentences: int) -> tuple[Batch, list[str]]:
  """Sources of the first num_sentences pairs of EVAL_SPLIT, one per row, and their French references.

  'index' numbers the rows, so that outputs can be put back in order after
  batching; the references are the untokenized text that BLEU scores against.
  """
  english, french = read_split(data_dir, EVAL_SPLIT)
  english, french = english[:num_sentences], french[:num_sentences]
  arrays = _one_per_row('inputs', encode(tokenizer, english), max_length)
  arrays['index'] = np.arange(len(english), dtype=np.int32)
  return arrays, french
