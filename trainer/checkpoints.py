"""Orbax checkpoints of the train state (arrays keyed by their tree paths) plus JSON metadata.

The state is saved as a flat dict {jax.tree_util.keystr(path): array} and rebuilt from the
abstract state's tree structure on restore. Orbax's own pytree handling keys arrays by path too,
but its tree metadata gives custom nodes (the optimizers' NamedTuples, the flax dataclass) as
nested dicts and lists, so checking a state against it would mean re-deriving orbax's key scheme;
flat, the keys are the paths the error messages print and the check is a lookup per path.
That check reads only the checkpoint's tree metadata, so a state that differs from the saved one
(another model or optimizer setting, or Shampoo's stacks padded for another device count) is one
`ConfigError` naming the first path that differs, before any array is read or lands in the wrong
place.
The metadata holds what the state cannot: timers and target bookkeeping.

A step that does not restore (files emptied, truncated or unreadable: a full disk or a kill while
orbax wrote) costs the steps since the one before it, not the run: restore falls back to older
steps, newest first, and moves the unreadable ones aside as `<step>.corrupt` (kept for a look,
and invisible to orbax, which takes only digit names as steps).

Saves are asynchronous: a step's files land while training goes on, and a write the disk refuses
surfaces at the next save (or at close) as one `WriteError` naming that step. Orbax deletes older
steps only once a new one has landed, so the last good step stays, and the next save of the failed
step replaces what it left (`<step>.orbax-checkpoint-tmp`). While a Checkpointer is open, the noise
of such a failure is dropped, as the run reports it in one line: the tracebacks orbax logs, those
of its tasks whose errors nobody retrieved, and the callbacks tensorstore's remaining writes make
into the event loop of the failed save, which orbax has closed ('Event loop is closed', raised
where nothing can catch it).
"""

import contextlib
import logging as std_logging
import os
import re
import sys

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from errors import ConfigError
from optimizers import shampoo
from trainer import workdir as workdirs

DIRECTORY = 'checkpoints'


def _keyed(tree) -> tuple[dict, jax.tree_util.PyTreeDef]:
  """`tree`'s leaves keyed by their key paths, and its structure to rebuild it."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): leaf for path, leaf in flat}, treedef


def _first_difference(saved: dict, wanted: dict) -> str | None:
  """How the checkpoint's arrays (path -> metadata) first differ from `wanted`'s, or None.

  The state's paths are checked in tree order, then the checkpoint's extra ones (orbax lists
  them sorted).
  """
  for path, want in wanted.items():
    if path not in saved:
      return f'{path} is not in the checkpoint'
    shape, dtype = tuple(saved[path].shape), np.dtype(saved[path].dtype)
    if shape != tuple(want.shape):
      why = f'{path} has shape {shape} in the checkpoint, {tuple(want.shape)} here'
      if shampoo.is_stack(path):
        why += ('; Shampoo pads its stacks to a multiple of the device count: resume on the device '
                'count (and blocking settings) that wrote the checkpoint')
      return why
    if dtype != np.dtype(want.dtype):
      return f'{path} has dtype {dtype} in the checkpoint, {np.dtype(want.dtype)} here'
  for path in saved:
    if path not in wanted:
      return f"{path} is in the checkpoint but not in this run's state"
  return None


# What orbax raises for a step whose files are emptied, cut short or missing (JSON and Unicode
# decode errors and tensorstore's DATA_LOSS are ValueErrors). Not RuntimeError: running out of
# memory while restoring says nothing about the files.
_UNREADABLE = (OSError, ValueError, KeyError)


def _last_line(error: BaseException) -> str:
  """The error as a traceback's last line names it, less tensorstore's spec dump."""
  lines = str(error).strip().splitlines()
  message = lines[-1].split(' [tensorstore_spec=')[0] if lines else ''
  return f'{type(error).__name__}: {message}' if message else type(error).__name__


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Handlers for both items, so a step's metadata can be read before anything is restored."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item, args in (('state', ocp.args.StandardSave), ('state', ocp.args.StandardRestore),
                     ('meta', ocp.args.JsonSave), ('meta', ocp.args.JsonRestore)):
    registry.add(item, args)
  return registry


def _disk_refusal(error: BaseException) -> str | None:
  """Why the disk refused a write of orbax's, or None for any other error: an OSError with a disk
  errno from its file writes, or tensorstore's ValueError naming one (`[os_error_code='28']`) from
  its array writes."""
  if workdirs.is_disk_error(error):
    return error.strerror
  code = re.search(r"\[os_error_code='(\d+)'\]", str(error)) if isinstance(error, ValueError) else None
  return os.strerror(int(code[1])) if code and int(code[1]) in workdirs.DISK_ERRNOS else None


class _Quiet(std_logging.Filter):
  """Drops the noise of a failed save (see the module's docstring) while installed."""

  LOGGERS = (logging.get_absl_logger(), std_logging.getLogger('asyncio'))  # orbax's; its unfinished tasks'

  def install(self) -> '_Quiet':
    for logger in self.LOGGERS:
      logger.addFilter(self)
    self._unraisablehook, sys.unraisablehook = sys.unraisablehook, self._unraisable
    return self

  def remove(self) -> None:
    for logger in self.LOGGERS:
      logger.removeFilter(self)
    sys.unraisablehook = self._unraisablehook

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not (record.exc_info and _disk_refusal(record.exc_info[1]))

  def _unraisable(self, unraisable) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      self._unraisablehook(unraisable)


class Checkpointer:

  def __init__(self, workdir: str, keep: int):
    self._directory = os.path.join(workdir, DIRECTORY)
    with workdirs.writing('the checkpoints folder', self._directory):
      self._manager = ocp.CheckpointManager(
          os.path.abspath(self._directory),
          # A step's folder is made before save() returns: made in the background, a refusal would
          # leave orbax's writers waiting for it until their timeout, keeping the process from exiting.
          options=ocp.CheckpointManagerOptions(
              max_to_keep=keep, create=True,
              async_options=ocp.AsyncOptions(create_directories_asynchronously=False)),
          handler_registry=_handler_registry())
    self._quiet = _Quiet().install()  # until close()
    self.last_saved_step = self._manager.latest_step()  # the newest step whose files have landed
    self._in_flight = None  # a step handed to orbax whose files may still be landing

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  @contextlib.contextmanager
  def _writing(self, step: int):
    """Orbax's writes of `step`; the disk's refusal is one WriteError naming the step."""
    try:
      yield
    except (OSError, ValueError) as e:
      reason = _disk_refusal(e)
      if reason is None:
        raise
      path = os.path.join(self._directory, str(step))
      raise workdirs.WriteError(f'cannot write checkpoint step {step} to {path}: {reason}') from None

  def _wait(self) -> None:
    """Waits for the step in flight to land (then it is the last saved one)."""
    step, self._in_flight = self._in_flight, None
    if step is None:
      return
    with self._writing(step):
      self._manager.wait_until_finished()
    self.last_saved_step = step

  def save(self, step: int, state, meta: dict) -> None:
    if step in (self.last_saved_step, self._in_flight):
      return
    self._wait()
    with self._writing(step):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_keyed(state)[0]), meta=ocp.args.JsonSave(meta)))
    self._in_flight = step

  def restore(self, abstract_state):
    """(state, meta) of the latest checkpoint that restores; `abstract_state` leaves carry shardings.

    Steps that fail to read are skipped with a warning and, once an older one has restored, moved
    aside; when none restores nothing is moved, so the workdir is left as it was found.

    Raises:
      ConfigError: the checkpoint's arrays are not `abstract_state`'s (by path, shape and dtype),
        or no step restores.
    """
    failures = {}
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._restore_step(step, abstract_state)
      except ConfigError:
        raise
      except _UNREADABLE as e:
        failures[step] = _last_line(e)
        continue
      if failures:
        self._move_aside(failures, step)
      return restored
    raise ConfigError(f'no checkpoint in {self._directory} restores: '
                      + ', '.join(f'step {step} ({why})' for step, why in failures.items()))

  def _move_aside(self, failures: dict[int, str], restored_step: int) -> None:
    """Renames each unreadable step to `<step>.corrupt` (on process 0) with a warning line."""
    if jax.process_index() == 0:
      for step, why in failures.items():
        path = os.path.join(self._directory, str(step))
        target, n = f'{path}.corrupt', 1
        while os.path.exists(target):
          n += 1
          target = f'{path}.corrupt{n}'
        with workdirs.writing(f'checkpoint step {step} aside', target):
          os.rename(path, target)
        logging.warning('checkpoint step %d does not restore (%s): moved aside to %s, resuming from step %d',
                        step, why, target, restored_step)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpoints moved aside')
    self._manager.reload()
    self.last_saved_step = restored_step

  def _restore_step(self, step: int, abstract_state):
    """(state, meta) of `step`, checked against `abstract_state` before any array is read."""
    saved = self._manager.metadata(step).item_metadata['state'].tree
    if not isinstance(saved, dict):
      raise ConfigError(
          f'{os.path.join(self._directory, str(step))} was written in an older checkpoint format '
          '(a bare list of arrays); it cannot be restored by name: start a new workdir')
    wanted, treedef = _keyed(abstract_state)
    difference = _first_difference(saved, wanted)
    if difference is not None:
      raise ConfigError(f"checkpoint step {step} does not match this run's state: {difference}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(wanted), meta=ocp.args.JsonRestore()))
    return jax.tree.unflatten(treedef, [restored['state'][path] for path in wanted]), restored['meta']

  def close(self) -> None:
    """Waits for the step in flight to land on disk."""
    try:
      self._wait()
    finally:
      try:
        self._manager.close()
      except (OSError, ValueError) as e:  # orbax's inner checkpointer raising the failure _wait reported
        if _disk_refusal(e) is None:
          raise
      finally:
        self._quiet.remove()
