"""SOAP (Vyas et al. 2024, arXiv 2409.11321): Adam run in the eigenbasis of Shampoo's statistics.

Written here from the paper's Algorithm 3, with the authors' reference implementation
(github.com/nikhilvyas/SOAP, soap.py) deciding what the paper leaves open. Per parameter the
layout is Shampoo's (`shampoo.blocking`): dimensions of size 1 dropped, adjacent small ones
merged while their product stays <= `merge_small_dims_block_size`, each dimension cut into
blocks of at most `block_size`. A dimension above `max_precond_dim` gets no statistic: the
basis on that side is the identity (one-sided, as the reference; an embedding table rotates
along its feature dimension only). Rank-0 and rank-1 parameters, and those with no dimension
<= `max_precond_dim`, get plain Adam.

Per block G with statistics on modes i:
  * L_i <- shampoo_beta L_i + (1 - shampoo_beta) G_(i) G_(i)^T (shampoo_beta = 1: plain sums);
  * G' = G x_i Q_i^T rotates the gradient into the eigenbasis Q_i of L_i;
  * M <- b1 M + (1 - b1) G', V <- b2 V + (1 - b2) G'^2: Adam's moments, both kept in the
    rotated basis;
  * the direction sqrt(1 - b2^t) / (1 - b1^t) x M / (sqrt(V) + eps) is rotated back (x_i Q_i),
    t counting the Adam updates (the reference's bias correction and epsilon);
  * every `precondition_frequency` updates, after the statistics took this step's gradient,
    each Q_i is refreshed by ONE power-iteration step warm-started from the previous basis:
    its columns ordered by their Rayleigh quotients diag(Q^T L Q), largest first, with V's
    coordinates permuted alike, then Q_i <- QR(L_i Q_i). M is rotated back with the old basis
    and into the new one, which keeps it equal to the paper's first moment kept in the original
    basis and rotated every step (the same in exact arithmetic), for two rotations per refresh
    instead of two per step.

The first update only sets the statistics and their first bases (eigh, columns by descending
eigenvalue) and its direction is zero for every parameter, as the reference's first step: no
gradient is ever rotated by a basis that saw it. Weight decay is the registry's (decoupled).

Blocks, statistics, bases and both moments are stacked per group (block shape) row for row, as
Shampoo's blocks and statistics: each stack is padded to a multiple of `stack_multiple`
(zero blocks, identity statistics) and split over the devices by `stack_sharding`, so each
device rotates, updates and refreshes its own rows; only the directions are gathered. Blocks
with a dimension that gets no statistic are neither padded nor split. The coordinates past a
ragged edge, zero in every block, are held at -(1 + trace) on the statistic's diagonal for the
eigendecompositions: below every real eigenvalue and decoupled from them, they keep unit basis
vectors, last, and the real coordinates rotate exactly as an unpadded block's would.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from errors import ConfigError, check_fields, check_range
from optimizers.shampoo import blocking
from optimizers.shampoo import preconditioning
from optimizers.shampoo.roots import HIGHEST, one_by_one, stacked_eigh

# The hyperparameters scale_by_soap takes, all required; defaults and sources: configs/optimizer_defaults.py.
FIELDS = ('b1', 'b2', 'shampoo_beta', 'eps', 'precondition_frequency', 'max_precond_dim', 'block_size',
          'merge_small_dims_block_size')


def _validate(hp: dict) -> None:
  check_fields(hp, FIELDS, 'soap')
  check_range(hp, 'b1', 0.0, 1.0)
  check_range(hp, 'b2', 0.0, 1.0)
  check_range(hp, 'shampoo_beta', 0.0, 1.0, high_inclusive=True)
  check_range(hp, 'eps', 0.0, None)
  for field in ('precondition_frequency', 'max_precond_dim', 'block_size', 'merge_small_dims_block_size'):
    check_range(hp, field, 1, None)


def layout_settings(hp: dict) -> dict:
  """The Shampoo layout settings (`blocking.plan`) that give SOAP's: a dimension above
  `max_precond_dim` left one-sided, rank-1 parameters unrotated."""
  return dict(block_size=hp['block_size'], merge_small_dims_block_size=hp['merge_small_dims_block_size'],
              skip_preconditioning_dim_size_gt=hp['max_precond_dim'], precondition_embeddings=True,
              precondition_rank1=False, exponent_override=0)


class SoapState(NamedTuple):
  count: jax.Array              # updates seen, the first (bases only) included
  stats: dict[str, jax.Array]   # statistic key (blocking.statistic_key) -> [n, b, b] L_i
  bases: dict[str, jax.Array]   # statistic key -> [n, b, b] eigenbasis of L_i, a column per eigenvector
  mu: dict[str, jax.Array]      # group -> [n, *block] first moment, rotated
  nu: dict[str, jax.Array]      # group -> [n, *block] second moment, rotated
  adam_mu: Any                  # per parameter: Adam's first moment where unrotated, else None
  adam_nu: Any                  # per parameter: Adam's second moment where unrotated, else None


def _shifted(stats, mask):
  """The statistics with each ragged-edge coordinate (mask 1) at -(1 + trace) on the diagonal."""
  shift = 1.0 + jnp.trace(stats, axis1=-2, axis2=-1)
  return stats - (shift[:, None] * mask)[:, :, None] * jnp.eye(stats.shape[-1], dtype=stats.dtype)


def eigenbasis(stats, mask):
  """[n, b, b] eigenvectors of each statistic, columns by descending eigenvalue."""
  return stacked_eigh(_shifted(stats, mask))[1][..., ::-1]


def power_step(stats, basis, mask):
  """One QR power-iteration step from `basis`, its columns first ordered by descending Rayleigh
  quotient; returns the new basis and that order ([n, b], for the second moment)."""
  shifted = _shifted(stats, mask)
  quotients = jnp.einsum('nij,nik,nkj->nj', basis, shifted, basis, precision=HIGHEST)
  order = jnp.argsort(-quotients, axis=-1, stable=True)
  basis = jnp.take_along_axis(basis, order[:, None, :], axis=-1)
  product = jnp.einsum('nij,njk->nik', shifted, basis, precision=HIGHEST)
  return one_by_one(lambda a: jnp.linalg.qr(a)[0], product), order


def rotate(blocks, group: str, kept: tuple[bool, ...], bases, back: bool = False):
  """A group's blocks into its eigenbases (x_i Q_i^T), or `back` (x_i Q_i); a mode without statistics stays."""
  keys = [blocking.statistic_key(group, mode) if keep else None for mode, keep in enumerate(kept)]
  return preconditioning.apply_roots(
      blocks, [None if key is None else bases[key] if back else jnp.swapaxes(bases[key], -1, -2) for key in keys])


def scale_by_soap(*, stack_multiple: int = 1, stack_sharding: jax.sharding.Sharding | None = None,
                  **hyperparameters) -> optax.GradientTransformation:
  """SOAP's direction; chain with a learning rate to step.

  Each stack is padded to a multiple of `stack_multiple`, the number of devices the trainer
  shards it over along its first axis with `stack_sharding`; the direction depends on neither.
  """
  hp = dict(hyperparameters)
  _validate(hp)
  if not isinstance(stack_multiple, int) or stack_multiple < 1:
    raise ConfigError(f'soap stack_multiple={stack_multiple!r} must be a positive integer')
  layout = layout_settings(hp)
  b1, b2, eps = hp['b1'], hp['b2'], hp['eps']
  constrain = ((lambda x: x) if stack_sharding is None
               else lambda x: jax.lax.with_sharding_constraint(x, stack_sharding))

  def plan(leaves):
    return blocking.plan([x.shape for x in leaves], layout, stack_multiple)

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    p = plan(leaves)
    block_shapes = {x.group: x.block for x in p.layouts if x.preconditioned}
    eye = {k: jnp.broadcast_to(jnp.eye(blocking.bucket_size(k)), (size.padded,) + (blocking.bucket_size(k),) * 2)
           for k, size in p.sizes.items()}
    moments = lambda: {group: jnp.zeros((size.padded,) + block_shapes[group]) for group, size in p.groups.items()}
    plain = lambda: jax.tree.unflatten(treedef, [None if x.preconditioned else jnp.zeros(w.shape, jnp.float32)
                                                 for w, x in zip(leaves, p.layouts)])
    return SoapState(
        count=jnp.zeros((), jnp.int32),
        stats={k: jnp.where(size.padding[:, None, None], eye[k], 0.0) for k, size in p.sizes.items()},
        bases=eye, mu=moments(), nu=moments(), adam_mu=plain(), adam_nu=plain())

  def refresh(stats, bases, mu, nu, p):
    """New bases by one power step; M rotated from the old bases to them, V's coordinates reordered."""
    steps = {k: power_step(s, bases[k], p.masks[k]) for k, s in stats.items()}
    new_bases = {k: basis for k, (basis, _) in steps.items()}
    for group in mu:
      kept = p.kept(group)
      for mode, keep in enumerate(kept):
        if keep:
          order = steps[blocking.statistic_key(group, mode)][1]
          shape = [order.shape[0]] + [1] * len(kept)
          shape[mode + 1] = order.shape[1]
          nu[group] = jnp.take_along_axis(nu[group], order.reshape(shape), axis=mode + 1)
      mu[group] = rotate(rotate(mu[group], group, kept, bases, back=True), group, kept, new_bases)
    return new_bases, mu, nu

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    p = plan(leaves)
    grads = [g.astype(jnp.float32) for g in leaves]
    count = state.count
    started = count > 0  # the first update only sets the bases
    t = jnp.maximum(count, 1).astype(jnp.float32)
    scale = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    moment = lambda old, new, beta: jnp.where(started, beta * old + (1 - beta) * new, old)
    adam = lambda m, v: scale * m / (jnp.sqrt(v) + eps)

    blocks = blocking.stack(grads, p, constrain)
    mu, nu, rotated_steps = {}, {}, {}
    for group, group_blocks in blocks.items():
      kept = p.kept(group)
      rotated = rotate(group_blocks, group, kept, state.bases)
      mu[group] = moment(state.mu[group], rotated, b1)
      nu[group] = moment(state.nu[group], rotated * rotated, b2)
      step = rotate(adam(mu[group], nu[group]), group, kept, state.bases, back=True)
      rotated_steps[group] = constrain(step) if blocking.spread(group) else step

    stats = preconditioning.update_statistics(state.stats, blocks, p, hp['shampoo_beta'], jnp.float32)
    branch = jnp.where(count == 0, 1, jnp.where(count % hp['precondition_frequency'] == 0, 2, 0))
    bases, mu, nu = jax.lax.switch(branch, [
        lambda bases, mu, nu: (bases, mu, nu),
        lambda bases, mu, nu: ({k: eigenbasis(s, p.masks[k]) for k, s in stats.items()}, mu, nu),
        lambda bases, mu, nu: refresh(stats, bases, dict(mu), dict(nu), p),
    ], state.bases, mu, nu)

    is_none = lambda x: x is None
    adam_mu, adam_nu, directions = [], [], []
    for g, m, v, x in zip(grads, jax.tree.leaves(state.adam_mu, is_leaf=is_none),
                          jax.tree.leaves(state.adam_nu, is_leaf=is_none), p.layouts):
      if x.preconditioned:
        adam_mu.append(None)
        adam_nu.append(None)
        directions.append(blocking.unstack(rotated_steps, x))
      else:
        adam_mu.append(moment(m, g, b1))
        adam_nu.append(moment(v, g * g, b2))
        directions.append(adam(adam_mu[-1], adam_nu[-1]))
    new_state = SoapState(count=count + 1, stats=stats, bases=bases, mu=mu, nu=nu,
                          adam_mu=jax.tree.unflatten(treedef, adam_mu), adam_nu=jax.tree.unflatten(treedef, adam_nu))
    return jax.tree.unflatten(treedef, [d.astype(g.dtype) for d, g in zip(directions, leaves)]), new_state

  return optax.GradientTransformation(init_fn, update_fn)

