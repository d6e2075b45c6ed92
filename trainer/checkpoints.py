"""Orbax checkpoints of the train state (as a flat list of arrays) plus JSON metadata.

The state is saved as its list of leaves and rebuilt from the abstract state's
tree structure on restore: optimizer states are nests of NamedTuples that need
not round-trip through a checkpoint format, while their leaves always do.
The metadata holds what the state cannot: timers and target bookkeeping.
"""

import os

import jax
import orbax.checkpoint as ocp

DIRECTORY = 'checkpoints'


class Checkpointer:

  def __init__(self, workdir: str, keep: int):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, DIRECTORY)),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'meta'))
    self.last_saved_step = self._manager.latest_step()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    if step == self.last_saved_step:
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(jax.tree.leaves(state)), meta=ocp.args.JsonSave(meta)))
    self.last_saved_step = step

  def restore(self, abstract_state):
    """(state, meta) of the latest checkpoint; `abstract_state` leaves carry shardings."""
    leaves, treedef = jax.tree.flatten(abstract_state)
    restored = self._manager.restore(self._manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(leaves), meta=ocp.args.JsonRestore()))
    return jax.tree.unflatten(treedef, restored['state']), restored['meta']

  def close(self) -> None:
    """Waits for asynchronous saves to land on disk."""
    self._manager.wait_until_finished()
    self._manager.close()
