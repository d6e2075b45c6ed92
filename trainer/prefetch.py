"""Training batches read and placed on the devices ahead of the step, in a background thread.

The loop asks for batch i + 1 right after dispatching step i. Read in the loop's thread, the
reader's time (parsing, packing, the host-to-device copy) adds to every step the devices do not
already hide; read here, `depth` batches wait on the devices, so a reader faster than the step
never makes the step wait. Order and content are the reader's: prefetching changes no batch,
and a resumed run reads from its checkpoint's step as before. The time the loop still waits is
returned by `get` so the run can report it (`input_wait_seconds`).
"""

import queue
import threading
import time
from typing import Any, Callable, Iterator

DEPTH = 2  # batches on the devices ahead of the step: one for the next step, one being copied
_POLL_SECONDS = 0.1


class Prefetcher:
  """`count` batches of `batches`, each passed through `place` in a thread of its own."""

  def __init__(self, batches: Iterator, place: Callable[[Any], Any], count: int, depth: int = DEPTH):
    self._queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._remaining = count
    self._thread = threading.Thread(target=self._fill, args=(batches, place, count), daemon=True,
                                    name='prefetch')
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_SECONDS)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self, batches: Iterator, place: Callable[[Any], Any], count: int) -> None:
    try:
      for _ in range(count):
        if self._stop.is_set() or not self._put((place(next(batches)), None)):
          return
    except BaseException as e:  # noqa: BLE001 -- raised again in the loop's thread, as if read there
      self._put((None, e))

  def get(self) -> tuple[Any, float]:
    """(the next batch, seconds waited for it). The reader's errors are raised here."""
    if self._remaining <= 0:
      raise StopIteration
    start = time.perf_counter()
    batch, error = self._queue.get()
    waited = time.perf_counter() - start
    if error is not None:
      self.close()
      raise error
    self._remaining -= 1
    return batch, waited

  def close(self) -> None:
    """Stops reading ahead: the thread ends after the batch it is reading."""
    self._stop.set()
    while True:  # a thread blocked on a full queue sees the stop within one poll
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=_POLL_SECONDS * 5)
