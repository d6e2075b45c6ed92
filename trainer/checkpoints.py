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
"""

import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from errors import ConfigError
from optimizers import shampoo

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


class Checkpointer:

  def __init__(self, workdir: str, keep: int):
    self._directory = os.path.join(workdir, DIRECTORY)
    self._manager = ocp.CheckpointManager(
        os.path.abspath(self._directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        handler_registry=_handler_registry())
    self.last_saved_step = self._manager.latest_step()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    if step == self.last_saved_step:
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_keyed(state)[0]), meta=ocp.args.JsonSave(meta)))
    self.last_saved_step = step

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
    """Waits for asynchronous saves to land on disk."""
    self._manager.wait_until_finished()
    self._manager.close()
