import os

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow_datasets as tfds

from errors import ConfigError
from data import batches, synthetic_translation, wmt

NUM_TRAIN, NUM_EVAL, SEED, VOCAB_SIZE = 3000, 200, 7, 400
MAX_LENGTH = 128  # every generated sentence fits (about 40 tokens with this small vocabulary)
KEYS = {'inputs', 'targets', 'inputs_segmentation', 'targets_segmentation', 'inputs_position',
        'targets_position'}


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  synthetic_translation.generate(data_dir, NUM_TRAIN, NUM_EVAL, SEED)
  return data_dir


@pytest.fixture(scope='module')
def tokenizer(corpus):
  return wmt.load_tokenizer(corpus, VOCAB_SIZE)


def unpack(batch, name):
  """The sentences of every row, in row order then segment order."""
  sentences = []
  for tokens, segments in zip(batch[name], batch[f'{name}_segmentation']):
    sentences += [tokens[segments == s].tolist() for s in range(1, segments.max() + 1)]
  return sentences


def unpack_pairs(batches_):
  inputs = [s for batch in batches_ for s in unpack(batch, 'inputs')]
  targets = [s for batch in batches_ for s in unpack(batch, 'targets')]
  return list(zip(inputs, targets))


def fitting_pairs(tokenizer, english, french, max_length):
  pairs = zip(wmt.encode(tokenizer, english), wmt.encode(tokenizer, french))
  return [(i, t) for i, t in pairs if len(i) <= max_length and len(t) <= max_length]


def test_the_registered_tfds_builder_reads_the_generated_corpus(corpus):
  builder = tfds.builder(wmt.DATASET, data_dir=corpus)
  assert type(builder).__module__ == 'tensorflow_datasets.translate.wmt14'
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
      'train': NUM_TRAIN, 'validation': NUM_EVAL, 'test': NUM_EVAL}
  example = next(iter(tfds.as_numpy(builder.as_dataset(split='train'))))
  assert set(example) == {'en', 'fr'}
  assert os.listdir(corpus) == ['wmt14_translate']  # no staging folder left behind
  english = {name: set(wmt.read_split(corpus, name)[0]) for name in ('train', 'validation', 'test')}
  assert len(english['train']) == NUM_TRAIN
  assert not english['train'] & english['test'] and not english['train'] & english['validation']
  synthetic_translation.generate(corpus, 10, 2, SEED + 1)  # already there: the first one stays
  assert tfds.builder(wmt.DATASET, data_dir=corpus).info.splits['train'].num_examples == NUM_TRAIN


def test_generation_is_deterministic_in_the_seed(corpus):
  pairs = synthetic_translation.sample_pairs(NUM_TRAIN + 2 * NUM_EVAL, SEED)
  assert synthetic_translation.sample_pairs(50, SEED) == pairs[:50]
  assert synthetic_translation.sample_pairs(50, SEED + 1) != pairs[:50]
  english, french = wmt.read_split(corpus, 'test')
  assert set(zip(english, french)) == set(pairs[NUM_EVAL:2 * NUM_EVAL])
  lengths = [len(sentence.split()) for pair in pairs for sentence in pair]
  assert min(lengths) >= 4 and max(lengths) <= 20


def test_french_reorders_and_agrees():
  st = synthetic_translation
  words = st.lexicon()
  dog = next(n for n in words.nouns if not n.feminine)
  house = next(n for n in words.nouns if n.feminine)
  big, red = words.adjectives[:2]
  verb, adverb = words.verbs[0], words.adverbs[0]
  the, a = st.DETERMINERS[:2]
  houses = st.NounPhrase(the, ('two', 'deux'), (big, red), house, plural=True)
  a_dog = st.NounPhrase(a, None, (red,), dog, plural=False)
  clause = st.Clause(houses, verb, False, adverb, a_dog, None, None)
  assert st.english_words((clause,)) == [
      'the', 'two', big.english, red.english, house.english + 's', adverb[0], verb.english,
      'a', red.english, dog.english]
  assert st.french_words((clause,)) == [
      'les', 'deux', st.french_plural(house.french), red.french + 'es', big.french + 'es',
      verb.french_stem + verb.french_endings[1], adverb[1], 'un', dog.french, red.french]
  negated = st.Clause(a_dog, verb, True, None, None, ('with', 'avec'), houses)
  assert st.english_words((negated,))[1:7] == [
      red.english, dog.english, 'does', 'not', verb.english, 'with']
  assert st.french_words((negated,))[1:7] == [
      dog.french, red.french, 'ne', verb.french_stem + verb.french_endings[0], 'pas', 'avec']


def test_tokenizer_round_trips_and_is_trained_once(corpus, tokenizer, monkeypatch):
  english, french = wmt.read_split(corpus, 'validation')
  sentences = english + french
  ids = wmt.encode(tokenizer, sentences)
  assert all(s[-1] == wmt.EOS_ID and wmt.EOS_ID not in s[:-1] and wmt.PAD_ID not in s for s in ids)
  assert max(max(s) for s in ids) < VOCAB_SIZE
  assert tokenizer.decode(ids) == sentences
  ids_of = (tokenizer.pad_id(), tokenizer.eos_id(), tokenizer.unk_id(), tokenizer.bos_id())
  assert ids_of == (wmt.PAD_ID, wmt.EOS_ID, wmt.UNK_ID, -1)
  path = wmt.tokenizer_path(corpus, VOCAB_SIZE)
  modified = os.path.getmtime(path)
  monkeypatch.setattr(spm.SentencePieceTrainer, 'train', lambda **_: pytest.fail('trained again'))
  assert wmt.load_tokenizer(corpus, VOCAB_SIZE).encode(sentences) == tokenizer.encode(sentences)
  assert os.path.getmtime(path) == modified
  assert [f for f in os.listdir(os.path.dirname(path)) if f.startswith('.')] == []


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(ConfigError, match='tfds build wmt14_translate/fr-en') as error:
    wmt.check_prepared(str(tmp_path))
  assert '\n' not in str(error.value)
  with pytest.raises(ConfigError, match='tfds build'):
    wmt.load_tokenizer(str(tmp_path), VOCAB_SIZE)


def test_pack_keeps_pairs_whole_and_in_order(corpus, tokenizer):
  pairs = fitting_pairs(tokenizer, *wmt.read_split(corpus, 'validation'), 64)
  packed = wmt.pack([i for i, _ in pairs], [t for _, t in pairs], 64)
  assert unpack_pairs([packed]) == pairs
  assert len(packed['inputs']) < len(pairs)  # several pairs share rows
  check_packed_rows(packed, len(packed['inputs']), 64)


def check_packed_rows(batch, batch_size, max_length):
  assert set(batch) == KEYS
  for array in batch.values():
    assert array.shape == (batch_size, max_length) and array.dtype == np.int32
  for name in ('inputs', 'targets'):
    tokens, segments = batch[name], batch[f'{name}_segmentation']
    positions = batch[f'{name}_position']
    np.testing.assert_array_equal(tokens != 0, segments != 0)
    np.testing.assert_array_equal(positions[segments == 0], 0)
    for row_segments, row_positions in zip(segments, positions):
      used = row_segments[row_segments != 0]
      np.testing.assert_array_equal(row_segments[:len(used)], used)  # tokens first, padding after
      starts = np.flatnonzero(np.diff(used, prepend=0))
      np.testing.assert_array_equal(used[starts], np.arange(1, len(starts) + 1))  # one run each
      run_lengths = np.diff(np.append(starts, len(used)))
      np.testing.assert_array_equal(row_positions[:len(used)],
                                    np.arange(len(used)) - np.repeat(starts, run_lengths))
  for inputs_row, targets_row in zip(batch['inputs_segmentation'], batch['targets_segmentation']):
    assert set(inputs_row) - {0} == set(targets_row) - {0}


def test_train_batches_pack_each_epoch_and_resume_exactly(corpus, tokenizer, monkeypatch):
  monkeypatch.setattr(wmt, 'WINDOW', 700)  # windows end inside batches
  batch_size, max_length = 256, 96  # about 1.7 pairs per row, 7 steps per epoch
  stream = wmt.train_batches(corpus, tokenizer, batch_size, max_length, SEED, 0, 0, 1)
  first, kept = [], []
  for _ in range(16):
    first.append(next(stream))
    kept.append(stream.position)
  for batch in first:
    check_packed_rows(batch, batch_size, max_length)
  unpacked = unpack_pairs(first)
  expected = fitting_pairs(tokenizer, *wmt.read_split(corpus, 'train'), max_length)
  assert len(expected) > 0.8 * NUM_TRAIN and len(unpacked) > 2 * len(expected)
  epoch = unpacked[:len(expected)]
  assert sorted(epoch) == sorted(expected) and epoch != expected  # each pair once, shuffled
  assert unpacked[len(expected):2 * len(expected)] != epoch  # the next epoch is reshuffled
  for step in (1, 9):
    replayed = wmt.train_batches(corpus, tokenizer, batch_size, max_length, SEED, step, 0, 1)
    sought = wmt.train_batches(corpus, tokenizer, batch_size, max_length, SEED, step, 0, 1, position=kept[step - 1])
    for resumed in (replayed, sought):
      batch = next(resumed)
      for key, array in first[step].items():
        np.testing.assert_array_equal(batch[key], array)
    assert sought.position == kept[step]
  with pytest.raises(ConfigError, match='data position'):
    wmt.train_batches(corpus, tokenizer, batch_size, max_length, SEED, 1, 0, 1, position=kept[0][0])
  other = next(wmt.train_batches(corpus, tokenizer, batch_size, max_length, SEED + 1, 0, 0, 1))
  assert not np.array_equal(other['inputs'], first[0]['inputs'])


def test_processes_read_disjoint_halves(corpus, tokenizer):
  halves = []
  for process, half in enumerate(('train[:50%]', 'train[50%:]')):
    expected = fitting_pairs(tokenizer, *wmt.read_split(corpus, half), MAX_LENGTH)
    batch = next(wmt.train_batches(corpus, tokenizer, 2048, MAX_LENGTH, SEED, 0, process, 2))
    pairs = unpack_pairs([batch])
    assert len(pairs) > len(expected)
    assert sorted(pairs[:len(expected)]) == sorted(expected)
    halves.append({tuple(source) for source, _ in expected})
  assert len(halves[0]) + len(halves[1]) == NUM_TRAIN and not halves[0] & halves[1]


def test_fixed_shards_give_the_same_global_batches_to_any_process_count(corpus, tokenizer):
  one = wmt.train_batches(corpus, tokenizer, 64, MAX_LENGTH, SEED, 0, 0, 1, num_shards=2)
  two = [wmt.train_batches(corpus, tokenizer, 64, MAX_LENGTH, SEED, 0, p, 2, num_shards=2) for p in (0, 1)]
  for _ in range(3):
    whole, halves = next(one), [next(stream) for stream in two]
    for key, array in whole.items():
      assert halves[0][key].shape[0] == 32
      np.testing.assert_array_equal(array, np.concatenate([halves[0][key], halves[1][key]]))
  with pytest.raises(ConfigError, match='multiple of the process count'):
    wmt.train_batches(corpus, tokenizer, 64, MAX_LENGTH, SEED, 0, 0, 2, num_shards=3)


def test_eval_arrays_hold_one_truncated_pair_per_row(corpus, tokenizer):
  english, french = wmt.read_split(corpus, wmt.EVAL_SPLIT)
  arrays = wmt.eval_arrays(corpus, tokenizer, MAX_LENGTH)
  assert {key: array.shape for key, array in arrays.items()} == dict.fromkeys(
      KEYS, (NUM_EVAL, MAX_LENGTH))
  assert unpack(arrays, 'inputs') == wmt.encode(tokenizer, english)
  assert unpack(arrays, 'targets') == wmt.encode(tokenizer, french)
  lengths = (arrays['targets_segmentation'] == 1).sum(1)
  columns = np.arange(MAX_LENGTH)
  np.testing.assert_array_equal(arrays['targets_position'],
                                np.where(columns < lengths[:, None], columns, 0))
  short = wmt.eval_arrays(corpus, tokenizer, 40)
  assert len(short['targets']) == NUM_EVAL and short['targets_segmentation'].max() == 1
  cut = lengths > 40
  assert cut.any() and not cut.all()
  np.testing.assert_array_equal(short['targets'][cut, -1], wmt.EOS_ID)
  np.testing.assert_array_equal(short['targets'][cut, :-1], arrays['targets'][cut, :39])
  np.testing.assert_array_equal(short['targets'][~cut], arrays['targets'][~cut, :40])
  weights = [b['weight'].sum() for b in batches.eval_batches(arrays, 64, 0, process_count=1)]
  assert sum(weights) == NUM_EVAL


def test_decode_arrays_and_decode_ids(corpus, tokenizer):
  english, french = wmt.read_split(corpus, wmt.EVAL_SPLIT)
  arrays, references = wmt.decode_arrays(corpus, tokenizer, MAX_LENGTH, num_sentences=50)
  assert references == french[:50]
  assert set(arrays) == {'inputs', 'inputs_segmentation', 'inputs_position', 'index'}
  np.testing.assert_array_equal(arrays['index'], np.arange(50))
  assert arrays['index'].dtype == np.int32
  assert unpack(arrays, 'inputs') == wmt.encode(tokenizer, english[:50])
  targets = wmt.eval_arrays(corpus, tokenizer, MAX_LENGTH)['targets']
  assert [wmt.decode_ids(tokenizer, row) for row in targets[:50]] == references
  ids = wmt.encode(tokenizer, [french[0]])[0]
  assert wmt.decode_ids(tokenizer, ids + [5, 6, wmt.EOS_ID]) == french[0]  # stops at the first EOS
  assert wmt.decode_ids(tokenizer, np.array(ids[:-1])) == french[0]  # or at the end of the row
