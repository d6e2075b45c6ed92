"""Prepares BERT pre-training data: raw text -> the original BERT / MLPerf TFRecords.

Once, then train any number of runs on it:

    python -m data.prepare_bert --input='raw/*.txt' --output_dir=DIR \
        [--vocab_size=30000] [--max_seq_length=128] [--max_predictions_per_seq=20] \
        [--masked_lm_prob=0.15] [--dupe_factor=5] [--short_seq_prob=0.1] \
        [--eval_documents=1000] [--num_shards=256] [--seed=12345] [--tokenizer=spm.model]

The input is laid out as for the original BERT's `create_pretraining_data.py`: one
sentence per line, a blank line between documents (e.g. Wikipedia and BooksCorpus
text). The script trains a unigram SentencePiece model on it (or uses --tokenizer),
builds examples as the original does and writes them into DIR in the layout and
format `data/bert_pretraining.py` describes and reads: --num_shards training files,
and the examples of the last --eval_documents documents as the eval split.
Phase 2 (length 512) is a second preparation into another DIR, with
--max_seq_length=512 --max_predictions_per_seq=76 and --tokenizer=<phase 1 DIR>/spm.model.

The output is a pure function of the input, the settings and --seed. One input
file's documents and examples are held in memory at a time (random next sentences
come from the same file, as when the original runs per shard): split a large corpus
into files of ~100 MB.
"""

import dataclasses
import glob
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
from typing import Iterator, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: less C++ chatter

import numpy as np
import sentencepiece as spm
import tensorflow as tf
from absl import logging

from errors import ArgumentParser, ConfigError
from data.bert_pretraining import (CLS_ID, EVAL_FILE, MASK_ID, PAD_ID, PREPARED, SEP_ID, TOKENIZER, UNK_ID,
                                   info, is_prepared)

SPECIAL_PIECES = ('[CLS]', '[SEP]', '[MASK]')  # ids 2, 3, 4: control symbols, never produced by text
NUM_SPECIAL = 5  # ids below this are never a random replacement
MIN_SEQ_LENGTH = 5  # [CLS] a [SEP] b [SEP]
TOKENIZER_SENTENCES = 10_000_000  # sentences sampled to train the tokenizer on a large corpus
TOKENIZER_THREADS = 8  # fixed, not os.cpu_count(): training must not depend on the machine

Document = list[list[int]]  # sentences of token ids


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a preparation depends on besides its input (the CLI flags of the same names)."""
  vocab_size: int = 30000  # an upper bound: a small corpus may have fewer pieces to offer
  max_seq_length: int = 128
  max_predictions_per_seq: int = 20
  masked_lm_prob: float = 0.15
  dupe_factor: int = 5  # passes over the training documents, each with fresh masks and pairs
  short_seq_prob: float = 0.1
  eval_documents: int = 1000
  num_shards: int = 256
  seed: int = 12345
  tokenizer: str | None = None  # an existing sentencepiece model with the format's special ids

  def check(self) -> None:
    if self.max_seq_length < MIN_SEQ_LENGTH:
      raise ConfigError(f'max_seq_length={self.max_seq_length} leaves no room for '
                        f'[CLS] A [SEP] B [SEP]: it must be at least {MIN_SEQ_LENGTH}')
    if not 1 <= self.max_predictions_per_seq <= self.max_seq_length - 3:
      raise ConfigError(f'max_predictions_per_seq={self.max_predictions_per_seq} must be in '
                        f'[1, max_seq_length - 3 = {self.max_seq_length - 3}]')
    if not 0 < self.masked_lm_prob <= 1:
      raise ConfigError(f'masked_lm_prob={self.masked_lm_prob} must be in (0, 1]')
    if not 0 <= self.short_seq_prob <= 1:
      raise ConfigError(f'short_seq_prob={self.short_seq_prob} must be in [0, 1]')
    for name in ('dupe_factor', 'eval_documents', 'num_shards'):
      if getattr(self, name) < 1:
        raise ConfigError(f'{name}={getattr(self, name)} must be at least 1')
    if self.vocab_size <= NUM_SPECIAL:
      raise ConfigError(f'vocab_size={self.vocab_size} must exceed the {NUM_SPECIAL} special ids')
    if self.tokenizer is not None and not os.path.isfile(self.tokenizer):
      raise ConfigError(f'tokenizer={self.tokenizer}: no such file')


# ---- Preparing: documents -> examples.

def _truncate_pair(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int,
                   rng: random.Random) -> None:
  """Cuts the longer side, at its front or back at random, until the pair fits (as the original)."""
  while len(tokens_a) + len(tokens_b) > max_num_tokens:
    longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def mask_tokens(tokens: Sequence[int], masked_lm_prob: float, max_predictions_per_seq: int,
                vocab_size: int, rng: random.Random) -> tuple[list[int], list[int], list[int]]:
  """The original's masked LM: (tokens with replacements, sorted positions, original ids).

  masked_lm_prob of the non-special tokens (rounded; at least 1, at most
  max_predictions_per_seq) are chosen at random; of those 80% become [MASK], 10% a
  random non-special id below vocab_size and 10% stay. [CLS] and [SEP] never are.
  """
  candidates = [i for i, token in enumerate(tokens) if token not in (CLS_ID, SEP_ID)]
  num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(candidates) * masked_lm_prob))))
  chosen = rng.sample(candidates, num_to_predict)  # the original shuffles all and takes the first
  output = list(tokens)
  for i in chosen:
    if rng.random() < 0.8:
      output[i] = MASK_ID
    elif rng.random() < 0.5:
      output[i] = rng.randrange(NUM_SPECIAL, vocab_size)
  positions = sorted(chosen)
  return output, positions, [tokens[i] for i in positions]


def _serialize(tokens: list[int], segment_ids: list[int], positions: list[int], labels: list[int],
               is_random_next: bool, settings: Settings) -> bytes:
  padding = [0] * (settings.max_seq_length - len(tokens))
  prediction_padding = [0] * (settings.max_predictions_per_seq - len(positions))
  ints = lambda values: tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  feature = {
      'input_ids': ints(tokens + padding),
      'input_mask': ints([1] * len(tokens) + padding),
      'segment_ids': ints(segment_ids + padding),
      'masked_lm_positions': ints(positions + prediction_padding),
      'masked_lm_ids': ints(labels + prediction_padding),
      'masked_lm_weights': tf.train.Feature(float_list=tf.train.FloatList(
          value=[1.0] * len(positions) + [0.0] * len(prediction_padding))),
      'next_sentence_labels': ints([int(is_random_next)]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def document_examples(documents: Sequence[Document], index: int, settings: Settings, vocab_size: int,
                      rng: random.Random) -> list[bytes]:
  """Serialized examples of documents[index], as the original's create_instances_from_document.

  Sentences fill a chunk up to a target length (max_seq_length - 3, or with
  short_seq_prob a random shorter one for the whole document); a random split makes
  A and B, and with probability 1/2 (always if the chunk is one sentence) B is
  replaced by text from a random other document, the unused sentences going back.
  """
  document = documents[index]
  max_num_tokens = settings.max_seq_length - 3
  target_length = max_num_tokens
  if rng.random() < settings.short_seq_prob:
    target_length = rng.randint(2, max_num_tokens)
  examples, chunk, chunk_length, i = [], [], 0, 0
  while i < len(document):
    chunk.append(document[i])
    chunk_length += len(document[i])
    if i == len(document) - 1 or chunk_length >= target_length:
      a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
      tokens_a = [token for sentence in chunk[:a_end] for token in sentence]
      tokens_b = []
      is_random_next = len(chunk) == 1 or rng.random() < 0.5
      if is_random_next:
        for _ in range(10):
          other = rng.randint(0, len(documents) - 1)
          if other != index:
            break
        other_document = documents[other]
        for sentence in other_document[rng.randint(0, len(other_document) - 1):]:
          tokens_b += sentence
          if len(tokens_b) >= target_length - len(tokens_a):
            break
        i -= len(chunk) - a_end  # the unused sentences start the next chunk
      else:
        tokens_b = [token for sentence in chunk[a_end:] for token in sentence]
      _truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
      tokens = [CLS_ID] + tokens_a + [SEP_ID] + tokens_b + [SEP_ID]
      segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
      tokens, positions, labels = mask_tokens(
          tokens, settings.masked_lm_prob, settings.max_predictions_per_seq, vocab_size, rng)
      examples.append(_serialize(tokens, segment_ids, positions, labels, is_random_next, settings))
      chunk, chunk_length = [], 0
    i += 1
  return examples


def create_examples(documents: list[Document], settings: Settings, vocab_size: int,
                    dupe_factor: int, rng: random.Random) -> list[bytes]:
  """Serialized examples of `dupe_factor` passes over the (shuffled) documents, shuffled."""
  documents = [document for document in documents if document]
  rng.shuffle(documents)
  examples = [example
              for _ in range(dupe_factor)
              for index in range(len(documents))
              for example in document_examples(documents, index, settings, vocab_size, rng)]
  rng.shuffle(examples)
  return examples


# ---- Preparing: text -> documents, the tokenizer, the output folder.

def find_inputs(patterns: str | Sequence[str]) -> list[str]:
  """Files matching any of the globs (a comma-separated string or a list), sorted."""
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(',') if p]
  return sorted({path for pattern in patterns for path in glob.glob(os.path.expanduser(pattern))
                 if os.path.isfile(path)})


def _lines(path: str) -> Iterator[str]:
  """Stripped lines of a UTF-8 file; '' marks a document boundary."""
  with open(path, encoding='utf-8') as f:
    try:
      for line in f:
        yield line.strip()
    except UnicodeDecodeError as e:
      raise ConfigError(f'{path} is not UTF-8 text ({e.reason})') from None


def _blocks(path: str) -> Iterator[list[str]]:
  """Documents of a file: its runs of non-blank lines."""
  block = []
  for line in _lines(path):
    if line:
      block.append(line)
    elif block:
      yield block
      block = []
  if block:
    yield block


def _documents(path: str, tokenizer: spm.SentencePieceProcessor) -> list[Document]:
  """Every block of the file as token ids of its sentences (those with any), encoded in one call."""
  blocks = list(_blocks(path))
  ids = tokenizer.encode([line for block in blocks for line in block], num_threads=os.cpu_count())
  ends = np.cumsum([len(block) for block in blocks])
  return [[sentence for sentence in ids[end - len(block):end] if sentence]
          for block, end in zip(blocks, ends)]


def _train_tokenizer(paths: list[str], settings: Settings) -> bytes:
  """A unigram SentencePiece model: ids 0 pad, 1 unk, 2-4 [CLS] [SEP] [MASK], no BOS/EOS."""
  sentences = (line for path in paths for line in _lines(path) if line)
  model = io.BytesIO()
  spm.set_random_generator_seed(settings.seed)  # samples TOKENIZER_SENTENCES of a larger corpus
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences, model_writer=model, vocab_size=settings.vocab_size,
        hard_vocab_limit=False, model_type='unigram', character_coverage=0.9999,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1, control_symbols=list(SPECIAL_PIECES),
        input_sentence_size=TOKENIZER_SENTENCES, shuffle_input_sentence=True,
        num_threads=TOKENIZER_THREADS, minloglevel=2)
  except RuntimeError as e:  # e.g. a vocabulary too small for the corpus's characters
    raise ConfigError(f'training the tokenizer failed: {str(e).strip().splitlines()[-1]}') from None
  return model.getvalue()


def _check_tokenizer(tokenizer: spm.SentencePieceProcessor, name: str, vocab_size: int) -> None:
  ids = (tokenizer.pad_id(), tokenizer.unk_id()) + tuple(map(tokenizer.piece_to_id, SPECIAL_PIECES))
  if ids != (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID) or not all(
      tokenizer.is_control(i) for i in (CLS_ID, SEP_ID, MASK_ID)):
    raise ConfigError(f'{name} must have ids 0 <pad>, 1 <unk> and control symbols 2 [CLS], 3 [SEP], '
                      '4 [MASK] (as the tokenizer this script trains)')
  if tokenizer.get_piece_size() > vocab_size:
    raise ConfigError(f'{name} has {tokenizer.get_piece_size()} pieces, more than '
                      f'vocab_size={vocab_size}')


def _settings_record(inputs: list[str], settings: Settings) -> dict:
  """What decides the output, as stored in prepared.json: an existing preparation is reused only if equal."""
  record = dataclasses.asdict(settings)
  if settings.tokenizer is not None:
    with open(settings.tokenizer, 'rb') as f:
      record['tokenizer'] = 'sha256:' + hashlib.sha256(f.read()).hexdigest()
  record['input'] = [[os.path.abspath(path), os.path.getsize(path)] for path in inputs]
  return json.loads(json.dumps(record))


def _reusable(output_dir: str, record: dict) -> bool:
  """True if output_dir holds this very preparation; an error if it holds anything else."""
  if is_prepared(output_dir):
    if info(output_dir)['settings'] == record:
      return True
    raise ConfigError(f'{output_dir} already holds data prepared with other settings or input: '
                      'choose another --output_dir, or delete it')
  if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
    raise ConfigError(f'{output_dir} exists and is not a finished preparation: choose another '
                      '--output_dir, or delete it')
  return False


def _write(staging: str, inputs: list[str], settings: Settings) -> dict:
  """Everything but prepared.json into `staging`; returns the rest of prepared.json."""
  documents_per_file = [sum(1 for _ in _blocks(path)) for path in inputs]
  total = sum(documents_per_file)
  if total <= settings.eval_documents:
    raise ConfigError(f'the input has {total} documents (blocks of lines between blank lines): '
                      f'holding out eval_documents={settings.eval_documents} leaves none to train on')

  if settings.tokenizer is None:
    model = _train_tokenizer(inputs, settings)
  else:
    with open(settings.tokenizer, 'rb') as f:
      model = f.read()
  with open(os.path.join(staging, TOKENIZER), 'wb') as f:
    f.write(model)
  tokenizer = spm.SentencePieceProcessor(model_proto=model)
  _check_tokenizer(tokenizer, settings.tokenizer or 'the trained tokenizer', settings.vocab_size)
  vocab_size = tokenizer.get_piece_size()
  logging.info('tokenizer: %d pieces', vocab_size)

  names = [f'train-{i:05d}-of-{settings.num_shards:05d}.tfrecord' for i in range(settings.num_shards)]
  counts = dict.fromkeys(names + [EVAL_FILE], 0)
  writers = [tf.io.TFRecordWriter(os.path.join(staging, name)) for name in names]
  eval_documents, first, written = [], 0, 0
  for file_index, (path, num_documents) in enumerate(zip(inputs, documents_per_file)):
    documents = _documents(path, tokenizer)
    num_train = min(num_documents, max(0, total - settings.eval_documents - first))
    eval_documents += documents[num_train:]
    first += num_documents
    rng = random.Random(f'bert_pretraining/{settings.seed}/train/{file_index}')
    examples = create_examples(documents[:num_train], settings, vocab_size, settings.dupe_factor, rng)
    for example in examples:
      writers[written % settings.num_shards].write(example)
      counts[names[written % settings.num_shards]] += 1
      written += 1
    logging.info('%s: %d documents (%d held out), %d training examples', path, num_documents,
                 num_documents - num_train, len(examples))
  for writer in writers:
    writer.close()

  rng = random.Random(f'bert_pretraining/{settings.seed}/eval')
  examples = create_examples(eval_documents, settings, vocab_size, 1, rng)
  with tf.io.TFRecordWriter(os.path.join(staging, EVAL_FILE)) as writer:
    for example in examples:
      writer.write(example)
  counts[EVAL_FILE] = len(examples)
  if not written or not examples:
    raise ConfigError('the input yields no training or no evaluation examples (no tokens in its documents?)')
  return {'max_seq_length': settings.max_seq_length,
          'max_predictions_per_seq': settings.max_predictions_per_seq,
          'vocab_size': vocab_size,
          'examples': {'train': written, 'eval': len(examples)},
          'documents': {'train': total - settings.eval_documents, 'eval': settings.eval_documents},
          'examples_per_file': counts}


def prepare(input_patterns: str | Sequence[str], output_dir: str, settings: Settings) -> dict:
  """Turns the input text into output_dir (see the module docstring) unless it already holds it.

  Everything is written into a hidden folder next to output_dir and renamed into
  place, prepared.json last, so a crash never leaves a folder that looks prepared,
  and when processes prepare concurrently the first one's folder stays. Returns the
  contents of prepared.json.
  """
  settings.check()
  inputs = find_inputs(input_patterns)
  if not inputs:
    raise ConfigError(f'no input files match {input_patterns!r}')
  record = _settings_record(inputs, settings)
  if _reusable(output_dir, record):
    return info(output_dir)
  parent = os.path.dirname(os.path.abspath(output_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(output_dir))}-', dir=parent)
  try:
    os.chmod(staging, 0o755)  # mkdtemp's folder is private; the data is not
    prepared = {**_write(staging, inputs, settings), 'settings': record}
    with open(os.path.join(staging, PREPARED), 'w') as f:
      json.dump(prepared, f, indent=2, sort_keys=True)
    try:
      os.rename(staging, output_dir)  # replaces output_dir only if it is an empty folder
    except OSError:  # another process finished first
      if not _reusable(output_dir, record):
        raise
    return info(output_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


# ---- Command line.

def main(argv: Sequence[str] | None = None) -> None:
  defaults = Settings()
  parser = ArgumentParser(prog='python -m data.prepare_bert', description=__doc__.split('\n')[0])
  parser.add_argument('--input', required=True,
                      help='raw text files: comma-separated globs; one sentence per line, a blank '
                           'line between documents')
  parser.add_argument('--output_dir', required=True, help='folder to create (atomically)')
  for field in dataclasses.fields(Settings):
    parser.add_argument(f'--{field.name}', type=str if field.name == 'tokenizer' else field.type,
                        default=getattr(defaults, field.name))
  args = vars(parser.parse_args(argv))
  input_patterns, output_dir = args.pop('input'), args.pop('output_dir')
  logging.set_verbosity(logging.INFO)
  try:
    prepared = prepare(input_patterns, output_dir, Settings(**args))
  except (ConfigError, OSError) as e:
    message = str(e).strip()
    print(f'error: {message.splitlines()[-1] if message else type(e).__name__}', file=sys.stderr)
    sys.exit(2)
  print(f'{output_dir}: {prepared["examples"]["train"]} training and {prepared["examples"]["eval"]} '
        f'evaluation examples, vocabulary of {prepared["vocab_size"]}')


if __name__ == '__main__':
  main()
