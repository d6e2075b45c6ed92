"""Roots refreshed outside the training step (root_refresh='async'), as the paper computes them.

After an update that calls for fresh roots, `AsyncRoots.after_update` copies the statistics it
left and dispatches their roots as a program of its own: JAX returns at once, and the roots are
computed beside the next steps (the copy lets those steps take over the statistics' buffers
without waiting). The update `staleness` later receives them: `before_update` puts them in the
state's `pending`, which that update installs (keeping the previous root of a matrix whose root
failed). So the roots in use always come from statistics exactly `staleness` updates older than
their first use: the run does not depend on timing, and equals inline refresh with each
refresh's roots delayed by `staleness`. A checkpoint taken with roots in flight holds them
(`to_save`), so a resumed run installs them at the same update.

With `root_refresh='async_host'` the copied statistics go to the host's CPU and their roots are
computed there, as the paper computes them, then put back on the devices with the state's
shardings: the accelerators never run a root. One process only (the statistics of other
processes are not on this host): more are refused.

Refreshes come every k updates (`preconditioning_compute_steps`) counted from
`start_preconditioning_step` (before it too with `separate_graft_momentum`), and `staleness`
(`root_staleness`; 0 means k) is at most k: one refresh is in flight at a time.
"""

import jax
import jax.numpy as jnp
import numpy as np

from errors import ConfigError

from optimizers.shampoo import blocking
from optimizers.shampoo import preconditioning
from optimizers.shampoo import transform


def _with_pending(opt_state, pending: transform.Pending):
  return jax.tree.map(lambda x: x._replace(pending=pending) if isinstance(x, transform.ShampooState) else x,
                      opt_state, is_leaf=lambda x: isinstance(x, transform.ShampooState))


class AsyncRoots:
  """The host's side of root_refresh='async' or 'async_host' for one run: which updates launch a refresh, and the
  refresh in flight."""

  def __init__(self, params, opt_state_shardings, stack_multiple: int, hp: dict):
    masks = blocking.plan([p.shape for p in jax.tree.leaves(params)], hp, stack_multiple).masks
    dtype = transform.DTYPES[hp['statistics_dtype']]
    self._every = hp['preconditioning_compute_steps']
    self._start = hp['start_preconditioning_step']
    self._before_start = hp['beta1'] > 0 and hp['separate_graft_momentum']
    self.staleness = hp['root_staleness'] or self._every
    # Outputs sharded as the state's own leaves, which the compiled step expects (None: unsharded).
    shardings = transform.find_state(opt_state_shardings) if opt_state_shardings is not None else None

    def compute(stats, bases, count, due) -> transform.Pending:
      # Zeros where a root fails: the update that installs them keeps the previous root there.
      roots, errors, succeeded, bases = preconditioning.refresh_roots(
          stats, jax.tree.map(jnp.zeros_like, stats), bases, masks, hp, dtype)
      return transform.Pending(due=due, stats_count=count - 1, roots=roots, root_errors=errors,
                               succeeded=succeeded, bases=bases)

    self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree),
                         out_shardings=shardings and (shardings.stats, shardings.bases))
    if hp['root_refresh'] == 'async_host':
      if jax.process_count() > 1:
        raise ConfigError(f"root_refresh='async_host' runs in one process ({jax.process_count()} here): the "
                          f"statistics of the others are not on this host; use 'async'")
      host = jax.local_devices(backend='cpu')[0]
      back = (shardings and shardings.pending) or jax.devices()[0]
      compute_on_host = jax.jit(compute)
      self._compute = lambda stats, bases, count, due: jax.device_put(
          compute_on_host(*jax.device_put((stats, bases, count), host), due), back)
    else:
      self._compute = jax.jit(compute, out_shardings=shardings and shardings.pending)
    self._in_flight: tuple[int, transform.Pending] | None = None

  def launches_after(self, count: int) -> bool:
    """Whether the update `count` (0 for the first) is followed by a refresh."""
    return (count - self._start) % self._every == 0 and (count >= self._start or self._before_start)

  def after_update(self, opt_state, count: int) -> None:
    """Dispatches the refresh that update `count` calls for, if any; returns without waiting."""
    if self.launches_after(count):
      state = transform.find_state(opt_state)
      due = count + self.staleness
      self._in_flight = due, self._compute(*self._copy((state.stats, state.bases)), state.count, np.int32(due))

  def before_update(self, opt_state, count: int):
    """`opt_state` with the roots in flight as its pending roots when update `count` is due for them."""
    if self._in_flight is None or self._in_flight[0] != count:
      return opt_state
    pending, self._in_flight = self._in_flight[1], None
    return _with_pending(opt_state, pending)

  def to_save(self, opt_state):
    """`opt_state` as a checkpoint must hold it: with the roots in flight, if any, as pending."""
    return opt_state if self._in_flight is None else _with_pending(opt_state, self._in_flight[1])
