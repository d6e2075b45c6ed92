"""Orbax checkpoints of the train state (arrays keyed by their tree paths) plus JSON metadata.

The state is saved as a flat dict {jax.tree_util.keystr(path): array} and rebuilt from the
abstract state's tree structure on restore. Orbax's own pytree handling keys arrays by path too,
but its tree metadata gives custom nodes (the optimizers' NamedTuples, the flax dataclass) as
nested dicts and lists, so checking a state against it would mean re-deriving orbax's key scheme;
flat, the keys are the paths the error messages print and the check is a lookup per path.
That check reads only the checkpoint's tree metadata, so a state that differs from the saved one
(another model or optimizer setting) is one `ConfigError` naming the first path that differs,
before any array is read or lands in the wrong place.
The metadata holds what the state cannot: timers and target bookkeeping.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from errors import ConfigError

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
      return f'{path} has shape {shape} in the checkpoint, {tuple(want.shape)} here'
    if dtype != np.dtype(want.dtype):
      return f'{path} has dtype {dtype} in the checkpoint, {np.dtype(want.dtype)} here'
  for path in saved:
    if path not in wanted:
      return f"{path} is in the checkpoint but not in this run's state"
  return None


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
    """(state, meta) of the latest checkpoint; `abstract_state` leaves carry shardings.

    Raises:
      ConfigError: the checkpoint's arrays are not `abstract_state`'s (by path, shape and dtype).
    """
    step = self._manager.latest_step()
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
