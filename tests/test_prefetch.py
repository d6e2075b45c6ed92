"""trainer/prefetch.py: batches read ahead in a thread, unchanged and in order, no further than its
depth; the reader's errors raised where the loop asks. What it saves in step time is measured by
bench/input_pipeline.py."""

import threading
import time

import pytest

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
