import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from data import batches, gas_sensor, windows


def test_gas_sensor_generator_writes_the_uci_format_and_reader_reads_it(tmp_path):
  path = str(tmp_path / 'gas')
  gas_sensor.generate(path, num_examples=200, num_features=7, seed=3, num_files=4)
  files = gas_sensor.find_files(path)
  assert [f.rsplit('/', 1)[1] for f in files] == ['batch1.dat', 'batch2.dat', 'batch3.dat', 'batch4.dat']
  line = open(files[0]).readline().split()
  gas, concentration = line[0].split(';')
  assert 1 <= int(gas) <= 6 and float(concentration) > -1e9
  assert [p.split(':')[0] for p in line[1:]] == [str(i) for i in range(1, 8)]
  x, y = gas_sensor.read(path)
  assert x.shape == (200, 7) and y.shape == (200,)


def test_reader_handles_sparse_lines_and_rejects_garbage(tmp_path):
  (tmp_path / 'batch1.dat').write_text('1;10.5 1:2.0 3:4.0\n2;20 2:1.5\n\n')
  x, y = gas_sensor.read(str(tmp_path))
  np.testing.assert_array_equal(x, [[2.0, 0.0, 4.0], [0.0, 1.5, 0.0]])
  np.testing.assert_array_equal(y, [10.5, 20.0])
  (tmp_path / 'batch2.dat').write_text('not a line\n')
  with pytest.raises(ValueError, match='batch2.dat:1'):
    gas_sensor.read(str(tmp_path))


def test_standardized_splits_use_training_statistics(tmp_path):
  gas_sensor.generate(str(tmp_path / 'g'), num_examples=500, num_features=5, seed=0)
  train, evaluation = gas_sensor.standardized_splits(str(tmp_path / 'g'), 0.2, seed=1)
  assert len(train['y']) == 400 and len(evaluation['y']) == 100
  np.testing.assert_allclose(train['x'].mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(train['x'].std(0), 1, atol=1e-4)
  assert train['x'].dtype == np.float32


def test_process_shares_tile_the_global_batch_and_restart_exactly():
  arrays = {'i': np.arange(100)}
  whole = batches.train_batches(arrays, 20, seed=5, start_step=0, process_index=0, process_count=1)
  stream = [next(whole)['i'] for _ in range(12)]  # crosses epoch boundaries (5 steps per epoch)
  for step in (0, 4, 5, 11):
    shares = [next(batches.train_batches(arrays, 20, 5, step, p, 4))['i'] for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(shares), stream[step])
  assert set(np.concatenate(stream[:5])) == set(range(100))  # an epoch sees every example once
  assert not np.array_equal(stream[0], stream[5])  # and the next epoch is reshuffled


def test_eval_batches_pad_the_last_batch_with_zero_weight():
  arrays = {'i': np.arange(10)}
  got = list(batches.eval_batches(arrays, 4, process_index=1, process_count=2))
  assert [b['i'].tolist() for b in got] == [[2, 3], [6, 7], [0, 0]]
  assert [b['weight'].tolist() for b in got] == [[1, 1], [1, 1], [0, 0]]
  total = sum(b['weight'].sum() for p in range(2) for b in batches.eval_batches(arrays, 4, p, 2))
  assert total == 10


def write_numbered_records(folder, counts) -> list[str]:
  """TFRecord files of counts[i] records each; record r of file i holds the number 1000 * i + r."""
  paths = []
  for i, count in enumerate(counts):
    paths.append(os.path.join(folder, f'part-{i}.tfrecord'))
    with tf.io.TFRecordWriter(paths[-1]) as writer:
      for r in range(count):
        writer.write(str(1000 * i + r).encode())
  return paths


def numbers_of(records):
  return {'number': tf.strings.to_number(records, tf.int64)}


def test_windows_are_seekable_from_the_positions_they_report(tmp_path):
  counts, ranges = [5, 12, 1, 9], [(0, -1), (2, 8), (0, -1), (1, 8)]  # 5 + 8 + 1 + 8 = 22 an epoch
  paths = write_numbered_records(str(tmp_path), counts)
  read = lambda start: windows.windows(paths, tf.data.TFRecordDataset, 4, 3, start, numbers_of, ranges)
  whole = list(itertools.islice(read(windows.Position()), 18))  # 6 windows an epoch: 3 epochs
  epochs = [[w for p, w in whole if p.epoch == e] for e in range(3)]
  numbers = [np.concatenate([w['number'] for w in epoch]).tolist() for epoch in epochs]
  wanted = sorted(list(range(5)) + list(range(1002, 1010)) + [2000] + list(range(3001, 3009)))
  assert sorted(numbers[0]) == wanted and numbers[0] != numbers[1]  # each record once; files reshuffled
  for position, window in whole:
    again = next(read(position))  # a reported position reads that window again, and nothing before it
    assert again[0] == position
    np.testing.assert_array_equal(again[1]['number'], window['number'])
    order = windows.file_order(len(paths), 3, position.epoch)
    taken = [ranges[i][1] if ranges[i][1] >= 0 else counts[i] for i in order]
    assert windows.locate(taken, 4 * position.window) == (position.file, position.record)


def test_streams_resume_from_a_position_or_by_replaying_to_the_step(tmp_path):
  paths = write_numbered_records(str(tmp_path), [7, 6, 8])

  def read(start):
    for position, window in windows.windows(paths, tf.data.TFRecordDataset, 5, 1, start, numbers_of):
      yield position, windows.shuffled(window, 1, position)

  stream = windows.stream(read, 3, 0)
  fresh, positions = [], []
  for _ in range(20):  # 21 records an epoch: batches run across epoch ends
    fresh.append(next(stream)['number'])
    positions.append(stream.position)
  assert sorted(np.concatenate(fresh[:7]).tolist()) == sorted(list(range(7)) + list(range(1000, 1006))
                                                              + list(range(2000, 2008)))
  for step in (1, 5, 7, 12):
    for resumed in (windows.stream(read, 3, step), windows.stream(read, 3, step, positions[step - 1])):
      for later in range(step, step + 3):
        np.testing.assert_array_equal(next(resumed)['number'], fresh[later])
      assert resumed.position == positions[step + 2]
