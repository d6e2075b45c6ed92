import collections
import filecmp
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from errors import ConfigError
from data import batches, bert_pretraining as bp, prepare_bert as prep, synthetic_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DOCUMENTS, EVAL_DOCUMENTS, SEED = 400, 40, 3
SETTINGS = prep.Settings(vocab_size=600, max_seq_length=64, max_predictions_per_seq=12, dupe_factor=2,
                         eval_documents=EVAL_DOCUMENTS, num_shards=4, seed=SEED)
SPECIAL = (bp.PAD_ID, bp.CLS_ID, bp.SEP_ID)


@pytest.fixture(scope='module')
def text(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('raw') / 'corpus.txt')
  synthetic_text.generate(path, NUM_DOCUMENTS, SEED)
  return path


@pytest.fixture(scope='module')
def prepared(text, tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp('prepared') / 'bert')
  prep.prepare(text, output_dir, SETTINGS)
  return output_dir


def read_records(path):
  """Every example of a TFRecord file, parsed by protobuf rather than the reader under test."""
  rows = collections.defaultdict(list)
  for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
    features = tf.train.Example.FromString(record).features.feature
    for name in bp.FEATURES:
      values = features[name].float_list.value or features[name].int64_list.value
      rows[name].append(np.asarray(values, np.int64))
  return {name: np.stack(values) for name, values in rows.items()}


def all_train_records(data_dir):
  files = sorted(f for f in os.listdir(data_dir) if f.startswith('train-'))
  parts = [read_records(os.path.join(data_dir, f)) for f in files]
  return {name: np.concatenate([p[name] for p in parts if p]) for name in bp.FEATURES}


def row_keys(arrays):
  """One hashable key per row, over all features."""
  flat = np.concatenate([arrays[name].reshape(len(arrays[name]), -1).astype(np.int64)
                         for name in bp.FEATURES], axis=1)
  return [row.tobytes() for row in flat]


def take_rows(stream, num_rows):
  parts, total = [], 0
  while total < num_rows:
    parts.append(next(stream))
    total += len(parts[-1]['input_ids'])
  return {name: np.concatenate([p[name] for p in parts])[:num_rows] for name in bp.FEATURES}


def test_prepared_layout_and_features(prepared):
  info = bp.info(prepared)
  assert sorted(os.listdir(prepared)) == sorted(
      ['prepared.json', 'spm.model', 'eval-00000-of-00001.tfrecord']
      + [f'train-{i:05d}-of-00004.tfrecord' for i in range(4)])
  assert [f for f in os.listdir(os.path.dirname(prepared)) if f.startswith('.')] == []
  assert (info['max_seq_length'], info['max_predictions_per_seq']) == (64, 12)
  assert info['documents'] == {'train': NUM_DOCUMENTS - EVAL_DOCUMENTS, 'eval': EVAL_DOCUMENTS}
  assert info['settings']['seed'] == SEED and info['vocab_size'] <= SETTINGS.vocab_size
  arrays = bp.eval_arrays(prepared)
  assert len(arrays['input_ids']) == info['examples']['eval'] > EVAL_DOCUMENTS
  shapes = {'input_ids': 64, 'input_mask': 64, 'segment_ids': 64, 'masked_lm_positions': 12,
            'masked_lm_ids': 12, 'masked_lm_weights': 12}
  for name, array in arrays.items():
    assert array.dtype == np.int32
    assert array.shape[1:] == ((shapes[name],) if name in shapes else ())
  ids, mask, segments = arrays['input_ids'], arrays['input_mask'], arrays['segment_ids']
  assert ids.max() < info['vocab_size']
  lengths = mask.sum(1)
  np.testing.assert_array_equal(mask, np.arange(64) < lengths[:, None])  # tokens first, then padding
  np.testing.assert_array_equal(ids == bp.PAD_ID, mask == 0)
  np.testing.assert_array_equal(ids[:, 0], bp.CLS_ID)
  for row, row_segments, length in zip(ids, segments, lengths):
    seps = np.flatnonzero(row == bp.SEP_ID)
    assert len(seps) == 2 and seps[1] == length - 1 and 1 < seps[0] < seps[1] - 1  # A and B non-empty
    expected = np.where((np.arange(64) > seps[0]) & (np.arange(64) < length), 1, 0)
    np.testing.assert_array_equal(row_segments, expected)
  assert set(np.unique(arrays['next_sentence_labels'])) == {0, 1}


def test_masking_statistics(prepared):
  rows = all_train_records(prepared)
  ids, mask, positions = rows['input_ids'], rows['input_mask'], rows['masked_lm_positions']
  labels, weights = rows['masked_lm_ids'], rows['masked_lm_weights']
  num_predictions = weights.sum(1)
  candidates = mask.sum(1) - 3  # all but [CLS] and the two [SEP]
  expected = np.minimum(12, np.maximum(1, np.round(candidates * 0.15)))
  np.testing.assert_array_equal(num_predictions, expected)
  assert (expected < 12).mean() > 0.95  # so the overall rate is not capped
  assert abs(num_predictions.sum() / candidates.sum() - 0.15) < 0.01
  used = np.arange(12) < num_predictions[:, None]
  np.testing.assert_array_equal(weights, used)  # weights 1, then padding
  assert not positions[~used].any() and not labels[~used].any()
  for row_positions, count, length in zip(positions, num_predictions, mask.sum(1)):
    chosen = row_positions[:count]
    assert (np.diff(chosen) > 0).all() and chosen[0] > 0 and chosen[-1] < length
  seen = np.take_along_axis(ids, positions, 1)[used]
  original = labels[used]
  assert not np.isin(original, SPECIAL + (bp.MASK_ID,)).any()  # never a special token, never padding
  assert not np.isin(seen, SPECIAL).any()  # [CLS] and [SEP] stay where they are
  masked = (seen == bp.MASK_ID).mean()
  kept = (seen == original).mean()
  replaced = ((seen != bp.MASK_ID) & (seen != original)).mean()
  assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.015 and abs(replaced - 0.1) < 0.015
  assert seen[(seen != bp.MASK_ID) & (seen != original)].min() >= prep.NUM_SPECIAL
  assert 0.45 < rows['next_sentence_labels'].mean() < 0.65


def test_mask_tokens_bounds():
  rng = random.Random(0)
  tokens = [bp.CLS_ID] + list(range(10, 110)) + [bp.SEP_ID] + [7] * 20 + [bp.SEP_ID]
  output, positions, labels = prep.mask_tokens(tokens, 0.15, 5, 50, rng)
  assert len(positions) == 5 and labels == [tokens[i] for i in positions]  # capped
  assert all(output[i] == tokens[i] for i in range(len(tokens)) if i not in positions)
  short = [bp.CLS_ID, 9, bp.SEP_ID, 8, bp.SEP_ID]
  assert len(prep.mask_tokens(short, 0.15, 5, 50, rng)[1]) == 1  # at least one


def test_next_sentences_follow_in_the_text(text, prepared):
  """Unmasked, A and B of a label-0 example are text of one document; of a label-1 one, rarely."""
  tokenizer = spm.SentencePieceProcessor(model_file=os.path.join(prepared, 'spm.model'))
  documents = [' '.join(block.split('\n')) for block in open(text).read().split('\n\n')]
  held_out = documents[-EVAL_DOCUMENTS:]

  def whole_words(ids):
    """Text of a segment, less the words its truncation may have cut at either end."""
    pieces = tokenizer.id_to_piece([i for i in ids if i not in SPECIAL])
    while pieces and not pieces[0].startswith('\u2581'):
      pieces.pop(0)
    return tokenizer.decode_pieces(pieces).rsplit(' ', 1)[0]

  arrays = bp.eval_arrays(prepared)
  same_document = collections.defaultdict(list)
  for i, ids in enumerate(arrays['input_ids']):
    count = arrays['masked_lm_weights'][i].sum()
    ids = ids.copy()
    ids[arrays['masked_lm_positions'][i][:count]] = arrays['masked_lm_ids'][i][:count]
    a, b = (whole_words(ids[arrays['segment_ids'][i] == s]) for s in (0, 1))
    label = arrays['next_sentence_labels'][i]
    same_document[label].append(any(a in d and b in d for d in held_out))
  assert all(same_document[0])
  assert np.mean(same_document[1]) < 0.2


def test_reader_returns_what_the_script_wrote(prepared):
  stored = read_records(os.path.join(prepared, bp.EVAL_FILE))
  arrays = bp.eval_arrays(prepared)
  for name in bp.FEATURES:
    np.testing.assert_array_equal(arrays[name], stored[name].reshape(arrays[name].shape))
  weights = [b['weight'].sum() for b in batches.eval_batches(arrays, 64, 0, process_count=1)]
  assert sum(weights) == len(arrays['input_ids'])

  written = all_train_records(prepared)
  num_train = bp.info(prepared)['examples']['train']
  assert len(written['input_ids']) == num_train == bp.examples_per_epoch(prepared, 0, 1)
  rows = take_rows(bp.train_batches(prepared, 50, SEED, 0, 0, 1), 2 * num_train)
  first, second = row_keys({n: a[:num_train] for n, a in rows.items()}), row_keys(
      {n: a[num_train:] for n, a in rows.items()})
  assert collections.Counter(first) == collections.Counter(row_keys(written))  # an epoch: each once
  assert first != row_keys(written) and second != first and sorted(second) == sorted(first)


@pytest.mark.parametrize('process_count', [2, 3, 5])  # files split evenly, unevenly; records split
def test_processes_read_disjoint_shares_that_cover_the_data(prepared, process_count):
  shares = collections.Counter()
  for process in range(process_count):
    size = bp.examples_per_epoch(prepared, process, process_count)
    stream = bp.train_batches(prepared, 8 * process_count, SEED, 0, process, process_count)
    parts = [next(stream) for _ in range(-(-size // 8))]
    assert {part['input_ids'].shape for part in parts} == {(8, 64)}
    shares.update(row_keys({name: np.concatenate([p[name] for p in parts])[:size]
                            for name in bp.FEATURES}))
  assert shares == collections.Counter(row_keys(all_train_records(prepared)))


def test_resume_continues_the_exact_stream(prepared, monkeypatch):
  monkeypatch.setattr(bp, 'WINDOW', 100)  # windows end inside files and batches
  stream = bp.train_batches(prepared, 64, SEED, 0, 0, 1)
  steps_per_epoch = bp.examples_per_epoch(prepared, 0, 1) // 64
  fresh, positions = [], []
  for _ in range(steps_per_epoch + 3):
    fresh.append(next(stream))
    positions.append(stream.position)
  for step in (3, steps_per_epoch, steps_per_epoch + 2):  # within, at and after an epoch's end
    for resumed in (bp.train_batches(prepared, 64, SEED, step, 0, 1),
                    bp.train_batches(prepared, 64, SEED, step, 0, 1, position=positions[step - 1])):
      got = next(resumed)
      for name in bp.FEATURES:
        np.testing.assert_array_equal(got[name], fresh[step][name])
    assert resumed.position == positions[step]
  two = [bp.train_batches(prepared, 64, SEED, 0, p, 2) for p in (0, 1)]
  later = [bp.train_batches(prepared, 64, SEED, 5, p, 2) for p in (0, 1)]
  for process in (0, 1):
    batch = [next(two[process]) for _ in range(6)][5]
    np.testing.assert_array_equal(next(later[process])['input_ids'], batch['input_ids'])
  other = next(bp.train_batches(prepared, 64, SEED + 1, 0, 0, 1))
  assert not np.array_equal(other['input_ids'], fresh[0]['input_ids'])
  with pytest.raises(ConfigError, match='multiple of the process count'):
    bp.train_batches(prepared, 63, SEED, 0, 0, 2)


def test_missing_or_mismatched_data_says_how_to_prepare_it(tmp_path, prepared):
  with pytest.raises(ConfigError) as error:
    bp.check_prepared(str(tmp_path / 'none'), 128, 20)
  message = str(error.value)
  assert '\n' not in message and f'--output_dir={tmp_path / "none"}' in message
  assert 'python -m data.prepare_bert --input=' in message and '--max_seq_length=128' in message
  assert not bp.is_prepared(str(tmp_path / 'none')) and bp.is_prepared(prepared)
  bp.check_prepared(prepared, 64, 12)
  with pytest.raises(ConfigError, match='prepared with max_seq_length=64, max_predictions_per_seq=12'):
    bp.check_prepared(prepared, 128, 20)


def run_main(capsys, *args):
  with pytest.raises(SystemExit) as exit_:
    prep.main(list(args))
  errors = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and len(errors) == 1 and errors[0].startswith('error: '), errors
  return errors[0]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, text):
  out = f'--output_dir={tmp_path / "out"}'
  (tmp_path / 'empty.txt').write_text('\n\n  \n')
  (tmp_path / 'binary.txt').write_bytes(b'\xff\xfe\x00text\n')
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x').write_text('x')
  cases = {
      'no input files match': [f'--input={tmp_path}/*.none', out],
      'the input has 0 documents': [f'--input={tmp_path}/empty.txt', out],
      'is not UTF-8 text': [f'--input={tmp_path}/binary.txt', out],
      'max_seq_length=4': [f'--input={text}', out, '--max_seq_length=4'],
      'max_predictions_per_seq=200': [f'--input={text}', out, '--max_predictions_per_seq=200'],
      'masked_lm_prob=0.0': [f'--input={text}', out, '--masked_lm_prob=0'],
      'leaves none to train on': [f'--input={text}', out, f'--eval_documents={NUM_DOCUMENTS}'],
      'is not a finished preparation': [f'--input={text}', f'--output_dir={tmp_path / "full"}'],
      'tokenizer=': [f'--input={text}', out, '--tokenizer=/no/such.model'],
      'invalid int value': [f'--input={text}', out, '--dupe_factor=many'],
      'unrecognized arguments': [f'--input={text}', out, '--bogus=1'],
      'required': [out],
  }
  for message, args in cases.items():
    assert message in run_main(capsys, *args)
  assert not (tmp_path / 'out').exists() and [f for f in os.listdir(tmp_path) if f.startswith('.')] == []


def test_cli_as_a_process(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'data.prepare_bert', f'--input={tmp_path}/*.txt',
       f'--output_dir={tmp_path}/out'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert result.returncode == 2 and len(errors) == 1 and 'no input files match' in errors[0]
  assert 'Traceback' not in result.stderr


def test_preparation_is_deterministic_atomic_and_reused(tmp_path, monkeypatch, capsys, prepared):
  text = str(tmp_path / 'small.txt')
  synthetic_text.generate(text, 60, SEED)
  settings = prep.Settings(vocab_size=300, max_seq_length=32, max_predictions_per_seq=5,
                           eval_documents=5, num_shards=2, seed=SEED)
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  prep.main([f'--input={text}', f'--output_dir={one}', '--vocab_size=300', '--max_seq_length=32',
             '--max_predictions_per_seq=5', '--eval_documents=5', '--num_shards=2', f'--seed={SEED}'])
  assert 'training and' in capsys.readouterr().out
  prep.prepare([text], two, settings)
  comparison = filecmp.dircmp(one, two)
  assert comparison.left_list == comparison.right_list and not comparison.left_only
  assert filecmp.cmpfiles(one, two, comparison.common_files, shallow=False)[0] == comparison.common_files

  prep.prepare([text], str(tmp_path / 'three'), prep.Settings(**{**settings.__dict__, 'seed': SEED + 1}))
  assert not filecmp.cmp(os.path.join(one, 'train-00000-of-00002.tfrecord'),
                         tmp_path / 'three' / 'train-00000-of-00002.tfrecord', shallow=False)

  monkeypatch.setattr(prep, '_write', lambda *_: pytest.fail('prepared again'))
  assert prep.prepare([text], one, settings) == bp.info(one)  # done already: nothing to do
  with pytest.raises(ConfigError, match='other settings'):
    prep.prepare([text], one, prep.Settings(**{**settings.__dict__, 'max_seq_length': 48}))
  monkeypatch.undo()

  tokenized = prep.prepare([text], str(tmp_path / 'long'), prep.Settings(**{
      **settings.__dict__, 'max_seq_length': 48, 'tokenizer': os.path.join(one, 'spm.model')}))
  assert tokenized['vocab_size'] == bp.info(one)['vocab_size']
  assert filecmp.cmp(os.path.join(one, 'spm.model'), tmp_path / 'long' / 'spm.model', shallow=False)
  with pytest.raises(ConfigError, match='more than vocab_size=100'):
    prep.prepare([text], str(tmp_path / 'small_vocab'), prep.Settings(**{
        **settings.__dict__, 'vocab_size': 100, 'tokenizer': os.path.join(one, 'spm.model')}))
  assert [f for f in os.listdir(tmp_path) if f.startswith('.')] == []


def test_prepare_tiny_generates_once_and_reuses(tmp_path, monkeypatch):
  data_dir = str(tmp_path / 'synthetic_bert')
  kwargs = dict(num_documents=50, vocab_size=300, max_seq_length=32, max_predictions_per_seq=5,
                seed=SEED, eval_documents=5, num_shards=2)
  assert synthetic_text.prepare_tiny(data_dir, **kwargs) == data_dir
  bp.check_prepared(data_dir, 32, 5)
  assert sorted(os.listdir(tmp_path)) == ['synthetic_bert', f'synthetic_text-50-{SEED}.txt']
  monkeypatch.setattr(prep, '_write', lambda *_: pytest.fail('prepared again'))
  monkeypatch.setattr(synthetic_text, 'generate', lambda *_: pytest.fail('generated again'))
  assert synthetic_text.prepare_tiny(data_dir, **kwargs) == data_dir


def test_generator_is_deterministic_and_in_the_raw_text_format(tmp_path):
  documents = synthetic_text.sample_documents(200, SEED)
  assert synthetic_text.sample_documents(20, SEED) == documents[:20]
  assert synthetic_text.sample_documents(20, SEED + 1) != documents[:20]
  assert all(5 <= len(d) <= 30 for d in documents)
  assert all(5 <= len(s.split()) <= 25 for d in documents for s in d)
  path = tmp_path / 'text.txt'
  synthetic_text.generate(str(path), 200, SEED)
  content = path.read_text()
  assert content.endswith('.\n') and '\n\n\n' not in content
  assert [block.splitlines() for block in content.strip().split('\n\n')] == documents
  assert os.listdir(tmp_path) == ['text.txt']


def word_features():
  """Surface form -> (category, agreement class 2 * plural + feminine; copulas: number) and noun topics."""
  st = synthetic_text
  words, features, topic_of = st.lexicon(), {}, {}
  for determiner in st.DETERMINERS:
    features.update({form: ('det', a) for a, form in enumerate(determiner)})
  features.update({form: ('pron', a) for a, form in enumerate(st.PRONOUNS)})
  features.update({form: ('cop', n) for n, form in enumerate(st.COPULA)})
  for index, vocabulary in enumerate(words.topics + (words.shared,)):
    for noun in vocabulary.nouns:
      for plural in (False, True):
        features[noun.form(plural)] = ('noun', 2 * plural + noun.feminine)
        topic_of[noun.form(plural)] = index
    for verb in vocabulary.verbs:
      features.update({verb + e: ('verb', a) for a, e in enumerate(st.VERB_ENDINGS)})
    for adjective in vocabulary.adjectives:
      features.update({adjective + e: ('adj', a) for a, e in enumerate(st.ADJECTIVE_ENDINGS)})
  return features, topic_of


def test_generated_text_agrees_across_long_distances():
  features, topic_of = word_features()
  shared_topic = synthetic_text.NUM_TOPICS
  with_attractor = sentences = 0
  for document in synthetic_text.sample_documents(300, SEED):
    previous = None
    topics = {topic_of[w] for s in document for w in s.lower().rstrip('.').split() if w in topic_of}
    assert len(topics - {shared_topic}) <= 1  # a document's topical nouns come from one topic
    for sentence in document:
      words = sentence[0].lower() + sentence[1:-1]
      tags = [features.get(w, ('other', None)) for w in words.split()]
      if tags[0][0] == 'pron':
        subject = tags[0][1]
        assert subject == previous  # a sentence-initial pronoun refers to the previous subject
      else:
        assert tags[0][0] == 'det' and tags[1][0] == 'noun'
        subject = tags[1][1]
      main_verb = next(i for i, (kind, _) in enumerate(tags)
                       if kind in ('verb', 'cop') and (i == 0 or words.split()[i - 1] != 'que'))
      sentences += 1
      with_attractor += any(kind == 'noun' and a != subject for kind, a in tags[2:main_verb])
      noun = None
      for i, (kind, agreement) in enumerate(tags):
        if kind in ('verb', 'pron'):
          assert agreement == subject, sentence
        elif kind == 'cop':
          assert agreement == subject // 2, sentence
        elif kind == 'det':
          assert tags[i + 1] == ('noun', agreement), sentence
        elif kind == 'noun':
          noun = agreement
        elif kind == 'adj':
          assert agreement == (subject if tags[i - 1][0] == 'cop' else noun), sentence
      previous = subject
  assert with_attractor > 0.15 * sentences  # often a disagreeing noun stands between subject and verb
