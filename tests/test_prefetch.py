"""trainer/prefetch.py: batches read ahead in a thread, unchanged and in order, no further than its
depth; the reader's errors raised where the loop asks. What it saves in step time is measured by
bench/input_pipeline.py."""

import threading
import time

import jax
import pytest

import trainer
from conftest import load_config
from data import batches
from tasks.transformer import Translation
from trainer import prefetch


def test_batches_arrive_in_order_placed_and_counted():
  batches = prefetch.Prefetcher(iter(range(100)), place=lambda x: x * 10, count=5)
  assert [batches.get()[0] for _ in range(5)] == [0, 10, 20, 30, 40]
  with pytest.raises(StopIteration):
    batches.get()
  batches.close()


def test_a_reader_error_is_raised_where_the_loop_asks_for_that_batch():
  def reader():
    yield from (1, 2)
    raise ValueError('bad record in shard 3')

  batches = prefetch.Prefetcher(reader(), place=lambda x: x, count=10)
  assert batches.get()[0] == 1 and batches.get()[0] == 2
  with pytest.raises(ValueError, match='bad record in shard 3'):
    batches.get()


def test_batches_are_read_ahead_unasked_but_no_further_than_the_depth_and_close_stops_the_reader():
  read = []

  def endless():
    while True:
      read.append(len(read))
      yield read[-1]

  batches = prefetch.Prefetcher(endless(), place=lambda x: x, count=10**9)
  deadline = time.monotonic() + 10
  while len(read) < prefetch.DEPTH and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)
  assert prefetch.DEPTH <= len(read) <= prefetch.DEPTH + 1  # the queue's batches, and one waiting for room
  batches.close()
  assert not any(t.name == 'prefetch' and t.is_alive() for t in threading.enumerate())


def test_a_slowed_reader_faster_than_the_step_costs_the_run_under_2_percent_in_waits(tmp_path, monkeypatch):
  """The tiny Transformer, its reader slowed to 20 ms a batch (its steps take longer): with the batches
  read ahead, the loop waits for input under 2% of its training time (reading each batch when
  asked, it waits the reader's whole time, over 10%: bench/input_pipeline.py)."""
  original = Translation.train_data

  def slowed(self, process_index, process_count, start_step, position=None):
    stream = original(self, process_index, process_count, start_step, position)

    def slow():
      for batch in stream:
        time.sleep(0.02)
        yield batch, stream.position
    return batches.Stream(slow())

  monkeypatch.setattr(Translation, 'train_data', slowed)
  config = load_config('transformer_adam', task__generated_train_pairs=2000, task__generated_eval_pairs=64,
                       task__vocab_size=300, task__tfds_dir='synthetic_wmt_small', global_batch_size=16,
                       eval_batch_size=32, num_steps=100, eval_every=100, checkpoint_every=100,
                       task__bleu_sentences=0, schedule__warmup_steps=10)
  summary = trainer.run(config, str(tmp_path / 'run'), 'transformer_adam', devices=jax.devices()[:1])
  assert summary['train_seconds'] > 100 * 0.02  # the steps are slower than the reader
  assert summary['input_wait_seconds'] < 0.02 * summary['train_seconds'], summary
