import gzip
import json
import logging
import math
import os
import re

import numpy as np
import pytest

from errors import ConfigError
from data import batches, criteo, synthetic_criteo, windows

SIZES = [2, 3, 10, 1000, 2 ** 31 - 1] + [97] * 21


def tsv_line(label, counts, hexes) -> str:
  """A Criteo line; None is an empty field, and the lists are padded with empty fields."""
  counts = list(counts) + [None] * (criteo.NUM_DENSE - len(counts))
  hexes = list(hexes) + [None] * (criteo.NUM_SPARSE - len(hexes))
  return '\t'.join([str(label)] + ['' if c is None else str(c) for c in counts]
                   + ['' if h is None else h for h in hexes])


def write(path, lines) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  text = ''.join(line + '\n' for line in lines).encode()
  with (gzip.open if path.endswith('.gz') else open)(path, 'wb') as f:
    f.write(text)


def numbered_lines(first: int, count: int) -> list[str]:
  """Lines whose I1 is their number, so a row says which line it came from."""
  return [tsv_line(i % 2, [i, 1], ['%08x' % (7 * i)]) for i in range(first, first + count)]


def line_numbers(batch) -> np.ndarray:
  return np.rint(np.expm1(batch['dense'][:, 0])).astype(int)


def expected_row(label, counts, hexes):
  """The preprocessing, by hand: log(1 + max(x, 0)) and 1 + int(hex, 16) % (size - 1), 0 if empty."""
  counts = list(counts) + [None] * (criteo.NUM_DENSE - len(counts))
  hexes = list(hexes) + [None] * (criteo.NUM_SPARSE - len(hexes))
  dense = [math.log1p(max(c or 0, 0)) for c in counts]
  sparse = [0 if h is None else 1 + int(h, 16) % (size - 1) for h, size in zip(hexes, SIZES)]
  return dense, sparse, float(label)


def test_parses_empty_fields_negative_counts_and_gzip_in_natural_file_order(tmp_path):
  rows = [(1, [0, -5, None, 12345678901, 7], ['0000000a', None, 'FFFFFFFF', 'deadBEEF', 'ffffffff']),
          (0, [None] * 13, [None] * 26),
          (0, [3] * 13, ['00000000'] * 26),
          (1, [-1, 999999999999999999], ['12345678', 'abcdef01', None, '00000001'])]
  write(str(tmp_path / 'train' / 'day_0'), [tsv_line(*rows[0])])
  write(str(tmp_path / 'eval' / 'day_10.gz'), [tsv_line(*row) for row in rows[2:]])
  write(str(tmp_path / 'eval' / 'day_2'), [tsv_line(*row) for row in rows[:2]])
  stats = criteo.ReadStats()
  got = criteo.eval_arrays(str(tmp_path), SIZES, stats=stats)
  assert (got['dense'].dtype, got['sparse'].dtype, got['label'].dtype) == (np.float32, np.int32, np.float32)
  assert got['dense'].shape == (4, 13) and got['sparse'].shape == (4, 26) and got['label'].shape == (4,)
  for i, row in enumerate(rows):  # day_2 before day_10
    dense, sparse, label = expected_row(*row)
    np.testing.assert_allclose(got['dense'][i], dense, rtol=1e-6)
    np.testing.assert_array_equal(got['sparse'][i], sparse)
    assert got['label'][i] == label
  assert (stats.rows, stats.malformed) == (4, 0)
  assert got['sparse'][0, 2] == 1 + 0xFFFFFFFF % 9 and got['sparse'][2, 0] == 1  # '00000000' is not missing
  assert criteo.eval_arrays(str(tmp_path), SIZES, max_examples=3)['label'].tolist() == [1, 0, 0]


def test_malformed_lines_are_counted_skipped_and_logged(tmp_path, caplog):
  good = [tsv_line(1, [1], ['0000000a']), tsv_line(0, [2], []), tsv_line(1, [3], [])]
  bad = [tsv_line(1, [1], [])[:-1],  # 39 fields
         tsv_line(0, [1], []) + '\t',  # 41 fields
         tsv_line(0, ['abc'], []), tsv_line(0, ['1.5'], []), tsv_line(0, ['-'], []),
         tsv_line(0, [], ['xyz12345']), tsv_line(0, [], ['1234567']), tsv_line(0, [], ['123456789']),
         tsv_line(2, [], []), tsv_line('', [], []), '', 'garbage']
  write(str(tmp_path / 'train' / 'part-0'), good)
  write(str(tmp_path / 'eval' / 'part-0'), [bad[0], good[0]] + bad[1:6] + [good[1]] + bad[6:] + [good[2]])
  stats = criteo.ReadStats()
  with caplog.at_level(logging.WARNING):
    got = criteo.eval_arrays(str(tmp_path), SIZES, stats=stats)
  np.testing.assert_allclose(got['dense'][:, 0], np.log1p([1, 2, 3]), rtol=1e-6)
  assert (stats.rows, stats.malformed, stats.example) == (3, len(bad), bad[0])
  assert any(f'skipped {len(bad)} malformed lines' in r.getMessage() for r in caplog.records)
  streamed = list(criteo.eval_batches(str(tmp_path), SIZES, 4, 0, 1))
  assert [b['weight'].tolist() for b in streamed] == [[1, 1, 1, 0]]


def test_train_shares_are_disjoint_and_cover_each_epoch(tmp_path):
  by_files, by_lines = str(tmp_path / 'files'), str(tmp_path / 'lines')
  for i in range(4):
    write(f'{by_files}/train/part-{i}', numbered_lines(30 * i, 30))
  for i in range(3):
    write(f'{by_lines}/train/part-{i}', numbered_lines(30 * i, 30))
  for dataset, total, process_count, rows, steps in ((by_files, 120, 2, 10, [6, 6]),
                                                     (by_lines, 90, 4, 3, [8, 8, 7, 7])):
    write(f'{dataset}/eval/part-0', numbered_lines(0, 1))
    epochs = []
    for p in range(process_count):
      stream = criteo.train_batches(dataset, SIZES, rows * process_count, seed=1, start_step=0,
                                    process_index=p, process_count=process_count)
      numbers = [line_numbers(next(stream)) for _ in range(2 * steps[p])]
      epochs.append((np.concatenate(numbers[:steps[p]]), np.concatenate(numbers[steps[p]:])))
    first = np.concatenate([e[0] for e in epochs])
    assert sorted(first.tolist()) == list(range(total))  # each line once, in one process's share
    for epoch_0, epoch_1 in epochs:  # the next epoch has the same share, reshuffled
      assert sorted(epoch_0) == sorted(epoch_1) and epoch_0.tolist() != epoch_1.tolist()


def test_resume_continues_the_exact_stream_across_epochs_and_malformed_lines(tmp_path, monkeypatch):
  monkeypatch.setattr(criteo, 'WINDOW', 16)  # 62 lines an epoch: windows end inside files and batches
  # Windows read in the loop's thread: the lines read by a step are then the ones it needs, not as
  # many as a read-ahead thread got to (up to 3 windows more).
  monkeypatch.setattr(windows, '_ahead', lambda chunks: chunks)
  for i in range(3):
    lines = numbered_lines(20 * i, 20)
    write(str(tmp_path / 'train' / f'part-{i}'), lines[:5] + ['bad line'] * (i == 1) + lines[5:] + ['x'] * (i == 2))
  write(str(tmp_path / 'eval' / 'part-0'), numbered_lines(0, 1))
  stats = criteo.ReadStats()
  stream = criteo.train_batches(str(tmp_path), SIZES, 8, seed=3, start_step=0, process_index=0,
                                process_count=1, stats=stats)
  whole, positions = [], []
  for _ in range(24):  # 60 rows an epoch: 7.5 steps, 3.2 epochs
    whole.append(next(stream))
    positions.append(stream.position)
  assert stats.malformed >= 6 and stats.rows >= 24 * 8
  assert all(b['dense'].shape == (8, 13) and b['sparse'].shape == (8, 26) for b in whole)
  for start in (5, 7, 8, 16, 20):  # 16: the second epoch is skipped without reading it
    replayed = criteo.train_batches(str(tmp_path), SIZES, 8, 3, start, 0, 1)
    read = criteo.ReadStats()
    sought = criteo.train_batches(str(tmp_path), SIZES, 8, 3, start, 0, 1, read, position=positions[start - 1])
    for step in range(start, start + 4):
      for resumed in (replayed, sought):
        got = next(resumed)
        for key in ('dense', 'sparse', 'label'):
          np.testing.assert_array_equal(got[key], whole[step][key])
      if step == start:  # the position's window and the next, not the lines before
        assert read.rows <= 2 * criteo.WINDOW, (start, read.rows)
    assert sought.position == positions[start + 3]
  sorted_lines = sorted(np.concatenate([line_numbers(b) for b in whole[:7]]).tolist())
  assert len(set(sorted_lines)) == len(sorted_lines)  # within an epoch no line twice
  other_seed = criteo.train_batches(str(tmp_path), SIZES, 8, 4, 0, 0, 1)
  assert line_numbers(next(other_seed)).tolist() != line_numbers(whole[0]).tolist()
  with pytest.raises(ConfigError, match='data position'):
    criteo.train_batches(str(tmp_path), SIZES, 8, 3, 5, 0, 1, position={'epoch': 0})


def test_eval_batches_stream_padded_shares_of_the_eval_split(tmp_path):
  write(str(tmp_path / 'train' / 'part-0'), numbered_lines(0, 1))
  write(str(tmp_path / 'eval' / 'part-0'), numbered_lines(0, 6))
  write(str(tmp_path / 'eval' / 'part-1'), numbered_lines(6, 4))
  arrays = criteo.eval_arrays(str(tmp_path), SIZES)
  for process in range(2):
    got = list(criteo.eval_batches(str(tmp_path), SIZES, 4, process, 2))
    want = list(batches.eval_batches(arrays, 4, process, 2))
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
      assert g['sparse'].shape == (2, 26)
      np.testing.assert_array_equal(g['weight'], w['weight'])
      real = w['weight'] == 1
      for key in ('dense', 'sparse', 'label'):
        np.testing.assert_array_equal(g[key][real], w[key][real])
  limited = list(criteo.eval_batches(str(tmp_path), SIZES, 4, 0, 1, max_examples=5))
  assert [line_numbers(b)[b['weight'] == 1].tolist() for b in limited] == [[0, 1, 2, 3], [4]]


def brute_force_auc(labels, scores, weights):
  total = credit = 0.0
  for i in np.flatnonzero(labels == 1):
    for j in np.flatnonzero(labels == 0):
      total += weights[i] * weights[j]
      credit += weights[i] * weights[j] * ((scores[i] > scores[j]) + 0.5 * (scores[i] == scores[j]))
  return credit / total


def test_auc_equals_brute_force_pairwise_auc_with_ties_and_weights():
  rng = np.random.default_rng(0)
  for trial in range(20):
    n = int(rng.integers(2, 60))
    labels = rng.integers(0, 2, n).astype(np.float32)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=n) + labels, 1 if trial % 2 else 6)  # many ties, or few
    weights = rng.uniform(0, 3, n) if trial % 3 else np.ones(n)
    assert criteo.auc(labels, scores, weights) == pytest.approx(brute_force_auc(labels, scores, weights))
    if trial % 3 == 0:  # weights of 1 are the default
      assert criteo.auc(labels, scores) == criteo.auc(labels, scores, weights)
  assert criteo.auc([0, 1, 0, 1], [0.5] * 4) == 0.5
  assert criteo.auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
  assert criteo.auc([0, 1, 1], [0.3, 0.2, 0.1], [1, 1, 0]) == 0.0  # weight 0 counts for nothing
  assert np.isnan(criteo.auc([1, 1], [0.1, 0.2]))


def test_generator_is_deterministic_clean_criteo_with_a_plausible_bayes_ceiling(tmp_path):
  first, second = str(tmp_path / 'a'), str(tmp_path / 'b')
  bayes = synthetic_criteo.generate(first, num_train=4000, num_eval=2000, seed=5, num_train_files=3)
  assert synthetic_criteo.generate(second, 4000, 2000, seed=5, num_train_files=3) == bayes
  names = ['eval/part-00000.tsv'] + [f'train/part-{i:05d}.tsv' for i in range(3)]
  assert sorted(os.listdir(first)) == ['bayes.json', 'eval', 'train']
  for name in names:
    with open(os.path.join(first, name), 'rb') as a, open(os.path.join(second, name), 'rb') as b:
      assert a.read() == b.read()
  with open(os.path.join(first, 'bayes.json')) as f:
    assert json.load(f) == bayes
  assert 0.6 < bayes['auc'] < 0.95 and bayes['log_loss'] < bayes['constant_log_loss']
  assert abs(bayes['base_rate'] - synthetic_criteo.BASE_RATE) < 0.04

  lines = [line.rstrip('\n') for name in names for line in open(os.path.join(first, name))]
  assert len(lines) == 6000
  fields = np.array([line.split('\t') for line in lines])
  assert fields.shape == (6000, 40)
  assert set(fields[:, 0]) == {'0', '1'}
  assert all(re.fullmatch(r'(-?[0-9]+)?', x) for x in fields[:, 1:14].ravel())
  assert all(re.fullmatch(r'([0-9a-f]{8})?', x) for x in fields[:, 14:].ravel())
  assert 0.01 < np.mean(fields[:, 1:] == '') < 0.2 and '-1' in fields[:, 2]
  stats = criteo.ReadStats()
  read = criteo.eval_arrays(first, [1000] * 26, stats=stats)
  assert stats.malformed == 0 and read['label'].tolist() == (fields[:2000, 0] == '1').tolist()

  assert synthetic_criteo.generate(first, 4000, 2000, 5, num_train_files=3) == bayes  # already there
  with pytest.raises(ConfigError, match='other settings'):
    synthetic_criteo.prepare_tiny(first, 4000, 2000, seed=6)


def test_prepare_tiny_generates_once(tmp_path):
  path = str(tmp_path / 'tiny')
  bayes = synthetic_criteo.prepare_tiny(path, 800, 200, seed=0)
  mtime = os.path.getmtime(os.path.join(path, 'bayes.json'))
  assert synthetic_criteo.prepare_tiny(path, 800, 200, seed=0) == bayes
  assert os.path.getmtime(os.path.join(path, 'bayes.json')) == mtime
  assert len(criteo.files(path, 'train')) == synthetic_criteo.NUM_TRAIN_FILES
  assert not [name for name in os.listdir(tmp_path) if name.startswith('.')]  # no staging left


def test_check_prepared_and_table_sizes_say_what_is_wrong(tmp_path):
  with pytest.raises(ConfigError, match=r'ailab\.criteo\.com.*day_0 \.\.\. day_22 in .*/train and '
                                        r'day_23 in .*/eval.*dac\.tar\.gz'):
    criteo.check_prepared(str(tmp_path))
  write(str(tmp_path / 'train' / 'day_0.gz'), numbered_lines(0, 1))
  with pytest.raises(ConfigError, match=f'no Criteo click logs in {tmp_path}/eval:'):
    criteo.check_prepared(str(tmp_path))
  write(str(tmp_path / 'eval' / 'day_23'), numbered_lines(0, 1))
  criteo.check_prepared(str(tmp_path))
  for sizes in ([100] * 25, [1] + [100] * 25, [2 ** 31] * 26):
    with pytest.raises(ConfigError, match='table_sizes'):
      criteo.eval_arrays(str(tmp_path), sizes)
  with pytest.raises(ConfigError, match='multiple of the process count'):
    criteo.train_batches(str(tmp_path), SIZES, 10, 0, 0, 0, 4)
