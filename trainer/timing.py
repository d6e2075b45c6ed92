"""Pause-aware run timing.

`train_seconds` counts only training: the clock runs between training steps and
is paused (after waiting for in-flight device work, so that work is charged to
training) around compilation, evaluation, checkpointing and diagnostics, which get their own
totals. Everything restarts from the totals a checkpoint recorded.
"""

import contextlib
import time

import jax

PHASES = ('train', 'compile', 'eval', 'checkpoint', 'diagnostics')
# Part of `train`, counted beside it: the loop waiting for its next batch (trainer/prefetch.py).
INPUT_WAIT = 'input_wait'
COUNTERS = (*PHASES, INPUT_WAIT)  # each a `<name>_seconds` total that checkpoints keep


class RunTimer:

  def __init__(self, totals: dict[str, float] | None = None):
    totals = totals or {}
    self.seconds = {phase: totals.get(f'{phase}_seconds', 0.0) for phase in COUNTERS}
    self._previous_total = totals.get('total_seconds', 0.0)
    self._started = time.perf_counter()
    self._train_since = None
    self._nested = []  # per open pause: seconds spent in pauses inside it (charged to theirs)

  def start_training(self) -> None:
    self._train_since = time.perf_counter()

  def stop_training(self, in_flight=None) -> None:
    """Ends a training interval once `in_flight` device work has finished."""
    if self._train_since is not None:
      jax.block_until_ready(in_flight)
      self.seconds['train'] += time.perf_counter() - self._train_since
      self._train_since = None

  @contextlib.contextmanager
  def pause(self, phase: str, in_flight=None):
    """Charges the block to `phase`; `in_flight` (e.g. the train state) is awaited first.

    A pause inside another (compiling an eval step during evaluation) is charged to its own
    phase only, so the phases never overlap.
    """
    was_training = self._train_since is not None
    self.stop_training(in_flight)
    start = time.perf_counter()
    self._nested.append(0.0)
    try:
      yield
    finally:
      elapsed = time.perf_counter() - start
      self.seconds[phase] += elapsed - self._nested.pop()
      if self._nested:
        self._nested[-1] += elapsed
      if was_training:
        self.start_training()

  @property
  def train_seconds(self) -> float:
    running = time.perf_counter() - self._train_since if self._train_since is not None else 0.0
    return self.seconds['train'] + running

  @property
  def total_seconds(self) -> float:
    return self._previous_total + time.perf_counter() - self._started

  def totals(self) -> dict[str, float]:
    """What a checkpoint stores and summary.json reports."""
    out = {f'{phase}_seconds': self.seconds[phase] for phase in COUNTERS}
    out['train_seconds'] = self.train_seconds
    out['total_seconds'] = self.total_seconds
    return out
