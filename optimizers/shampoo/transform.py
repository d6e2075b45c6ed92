"""Shampoo with the practical ingredients of Anil et al. (2020), as an optax transformation.

Written here from the paper (arXiv 2002.09018) and first principles. Options give the public
reference implementation's semantics where they differ (configs/resnet50_shampoo.py:paper takes them;
tests/test_shampoo_reference.py checks its updates against precondition-opt's).

Per parameter, a static layout (`blocking`) decides how it is preconditioned:
  * dimensions of size 1 are dropped and adjacent small dimensions merged while their
    product stays <= `merge_small_dims_block_size` (conv [3,3,64,64] -> [576, 64]);
  * parameters of rank 0, and of rank 1 (biases, norm scales) unless `precondition_rank1`,
    get the graft direction only, and so do those with a dimension above
    `skip_preconditioning_dim_size_gt` (embedding tables), unless `precondition_embeddings`:
    then only their other dimensions get statistics (a [vocab, d] table: one d x d
    statistic, shared by all rows), and grafting sets the norm of each row (each slice along the skipped dimension), so a
    rarely seen row keeps the graft's step size while the statistic turns its direction;
  * the others are cut into blocks of at most `block_size` per dimension (the last block
    zero-padded; a skipped dimension is one block); a block with k preconditioned
    dimensions has k statistics L_i <- beta2 L_i + (1-beta2) G_(i) G_(i)^T (beta2 = 1:
    plain sums; from 0, or from `matrix_epsilon` I when `statistics_start_at_epsilon`), and
    its direction is G x_1 L_1^{-1/2k} ... x_k L_k^{-1/2k} (`preconditioning`).

Blocks of all parameters are stacked per group (block shape, exponent) into [n, *block]
arrays, and each preconditioned mode of a group has a [n, b, b] stack of statistics and
roots, row i for block i (`blocking`): a statistics update, a root refresh and the
preconditioning are one batched op per stack. `stack_multiple` (the trainer's device count)
pads each stack to a multiple of it (zero blocks, identity statistics) and `stack_sharding`
splits the blocks and their statistics alike over all devices: each device updates, roots
and preconditions its own rows, and only the preconditioned directions are gathered, as in
the paper's distributed design. The padding gets no statistics, preconditions nothing and
is left out of `health` and `metrics`. Blocks with a dimension that gets no statistics (an
embedding table, one block) are neither padded nor split: their parameter's sharding governs.

Roots (`roots`): coupled Newton iteration, scaled before each step (or eigh), damped by
`matrix_epsilon` (times the largest eigenvalue, by power iteration, when
`relative_matrix_epsilon`); a root with
error >= `inverse_failure_threshold`, or not finite, keeps the previous one. Roots are
refreshed at `start_preconditioning_step` and then every `preconditioning_compute_steps`
updates, inside the jitted step with `lax.cond` (before the start only with
`separate_graft_momentum`: unused there otherwise); with `root_refresh='async'` (or `'async_host'`) outside it
(`refresh`: the update installs the roots it finds `pending` for it).
Grafting (`grafting`) rescales each block of the Shampoo direction to the norm of the graft's
direction for that block (each row, along a skipped dimension), or with
`graft_granularity='layer'` each parameter's. Before `start_preconditioning_step` the graft
direction is used. The momentum runs over the direction in use, or with
`separate_graft_momentum` one over the graft direction and one over Shampoo's, both from the
first update, the step taking the graft's before the start and Shampoo's from it.
"""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from errors import ConfigError, check_fields, check_range
from optimizers.shampoo import blocking
from optimizers.shampoo import grafting
from optimizers.shampoo import preconditioning
from optimizers.shampoo import roots as roots_lib

# The hyperparameters scale_by_shampoo takes, all of them required; their defaults and meanings:
# configs/optimizer_defaults.py.
FIELDS = ('block_size', 'beta1', 'beta2', 'diagonal_epsilon', 'matrix_epsilon', 'relative_matrix_epsilon',
          'statistics_start_at_epsilon', 'start_preconditioning_step', 'preconditioning_compute_steps',
          'statistics_compute_steps', 'graft_type', 'graft_granularity', 'nesterov', 'moving_average_for_momentum',
          'separate_graft_momentum', 'exponent_override', 'inverse_failure_threshold',
          'skip_preconditioning_dim_size_gt', 'precondition_embeddings', 'precondition_rank1',
          'merge_small_dims_block_size', 'root_method', 'newton_iterations', 'newton_tolerance', 'warm_eigh_tolerance',
          'statistics_dtype',
          'root_refresh', 'root_staleness')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
ROOT_REFRESHES = ('inline', 'async', 'async_host')
ASYNC_REFRESHES = ('async', 'async_host')  # roots computed outside the step: on the devices, or the host CPU


def _validate(hp: dict) -> None:
  check_fields(hp, FIELDS, 'shampoo')
  check_range(hp, 'block_size', 1, None)
  check_range(hp, 'beta1', 0.0, 1.0)
  check_range(hp, 'beta2', 0.0, 1.0, high_inclusive=True)
  for field in ('diagonal_epsilon', 'matrix_epsilon', 'start_preconditioning_step',
                'exponent_override', 'newton_tolerance', 'warm_eigh_tolerance'):
    check_range(hp, field, 0, None)
  for field in ('preconditioning_compute_steps', 'statistics_compute_steps', 'newton_iterations',
                'skip_preconditioning_dim_size_gt', 'merge_small_dims_block_size'):
    check_range(hp, field, 1, None)
  check_range(hp, 'root_staleness', 0, hp['preconditioning_compute_steps'], high_inclusive=True)
  if not hp['inverse_failure_threshold'] > 0:  # NaN too
    raise ConfigError(f'optimizer.inverse_failure_threshold={hp["inverse_failure_threshold"]} must be > 0')
  for field, choices in (('graft_type', grafting.GRAFT_TYPES), ('graft_granularity', grafting.GRANULARITIES),
                         ('root_method', roots_lib.ROOT_METHODS), ('statistics_dtype', tuple(DTYPES)),
                         ('root_refresh', ROOT_REFRESHES)):
    if hp[field] not in choices:
      raise ConfigError(f'optimizer.{field}={hp[field]!r}: choose one of {", ".join(choices)}')


class Pending(NamedTuple):
  """Roots computed outside the step (root_refresh='async'), for the update whose count is `due`."""
  due: jax.Array              # the update that installs them; below the count once installed
  stats_count: jax.Array      # the update whose statistics they were computed from
  roots: dict[str, jax.Array]
  root_errors: dict[str, jax.Array]
  succeeded: dict[str, jax.Array]  # statistic key -> [n] whether the matrix got a fresh root
  bases: dict[str, jax.Array] | None  # root_method='warm_eigh': the eigenbases after that refresh


class ShampooState(NamedTuple):
  count: jax.Array            # updates applied so far
  stats: dict[str, jax.Array]  # statistic key (blocking.statistic_key) -> [n, b, b]
  roots: dict[str, jax.Array]  # statistic key -> [n, b, b] inverse roots in use
  root_errors: dict[str, jax.Array]  # statistic key -> [n] error of the latest root computation
  bases: dict[str, jax.Array] | None  # root_method='warm_eigh': statistic key -> [n, b, b] eigenbases kept
  failed_roots: jax.Array     # matrices whose root failed and kept the previous one (cumulative)
  refresh_failures: jax.Array  # matrices whose root failed at the latest refresh
  root_refreshes: jax.Array   # times the roots were recomputed
  rooted: dict[str, jax.Array]  # statistic key -> [n] whether the matrix ever got a root (else: identity)
  padding: dict[str, jax.Array]  # statistic key -> [n] True for the identity matrices that pad the stack
  graft: Any                  # per-parameter Adagrad / RMSprop accumulators, or None
  momentum: Any               # per-parameter momentum (of the Shampoo direction when separate), or None
  graft_momentum: Any         # per-parameter momentum of the graft direction (separate_graft_momentum), or None
  roots_from: jax.Array       # the update whose statistics the roots in use come from (-1: none yet)
  pending: Pending | None     # root_refresh='async': the latest roots computed outside the step


# The fields of ShampooState and Pending with a row per block of a group: padded to `stack_multiple` rows.
STACK_FIELDS = ('stats', 'roots', 'root_errors', 'bases', 'rooted', 'padding', 'succeeded')


def is_stack(path: str) -> bool:
  """Whether `path` (a state leaf's jax.tree_util.keystr) is one of Shampoo's stacks, whose length
  depends on the device count it was padded for: a checkpoint explains a mismatch with it."""
  return re.search(rf"\.(?:{'|'.join(STACK_FIELDS)})\['[0-9xu]+_p\d+_m\d+'\]$", path) is not None


def scale_by_shampoo(*, stack_multiple: int = 1, stack_sharding: jax.sharding.Sharding | None = None,
                     weight_decay: float = 0.0, weight_decay_mask=None,
                     **hyperparameters) -> optax.GradientTransformation:
  """Shampoo's (grafted, momentum) direction; chain with a learning rate to step.

  Each stack is padded to a multiple of `stack_multiple`, the number of devices the trainer
  shards it over along its first axis with `stack_sharding` (which the update also gives the
  stacks of blocks it builds, so each device works on its rows only); the direction depends on
  neither. `weight_decay` x the parameter is added to the grafted direction before the momentum
  (the reference's coupled decay: optimizer.weight_decay_mode='before_momentum'), where
  `weight_decay_mask` (params -> tree of bools; None: everywhere) says so.
  """
  hp = dict(hyperparameters)
  _validate(hp)
  if not isinstance(stack_multiple, int) or stack_multiple < 1:
    raise ConfigError(f'shampoo stack_multiple={stack_multiple!r} must be a positive integer')
  dtype = DTYPES[hp['statistics_dtype']]
  beta1, beta2 = hp['beta1'], hp['beta2']
  start = hp['start_preconditioning_step']
  separate = beta1 > 0 and hp['separate_graft_momentum']
  layerwise = hp['graft_granularity'] == 'layer' and hp['graft_type'] != 'none'
  initial = hp['matrix_epsilon'] if hp['statistics_start_at_epsilon'] else 0.0
  asynchronous = hp['root_refresh'] in ASYNC_REFRESHES
  warm = hp['root_method'] == 'warm_eigh'
  constrain = ((lambda x: x) if stack_sharding is None
               else lambda x: jax.lax.with_sharding_constraint(x, stack_sharding))

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    sizes = blocking.stack_sizes([p.shape for p in leaves], hp, stack_multiple)
    eye = {k: jnp.broadcast_to(jnp.eye(blocking.bucket_size(k), dtype=dtype),
                               (size.padded, blocking.bucket_size(k), blocking.bucket_size(k)))
           for k, size in sizes.items()}
    stats = {k: jnp.where(size.padding[:, None, None], eye[k], initial * eye[k]).astype(dtype)
             for k, size in sizes.items()}
    per_param = lambda: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    # Fresh float32 copies each time: a state donated to the step must not alias `eye`.
    identity_bases = lambda: {k: jnp.array(e, jnp.float32, copy=True) for k, e in eye.items()} if warm else None
    return ShampooState(
        count=jnp.zeros((), jnp.int32), stats=stats, roots=eye,
        root_errors={k: jnp.zeros(size.padded, jnp.float32) for k, size in sizes.items()},
        bases=identity_bases(),
        failed_roots=jnp.zeros((), jnp.int32), refresh_failures=jnp.zeros((), jnp.int32),
        root_refreshes=jnp.zeros((), jnp.int32),
        rooted={k: jnp.zeros(size.padded, bool) for k, size in sizes.items()},
        padding={k: jnp.asarray(size.padding) for k, size in sizes.items()},
        graft=per_param() if grafting.keeps_accumulators(hp['graft_type']) else None,
        momentum=per_param() if beta1 > 0 else None, graft_momentum=per_param() if separate else None,
        roots_from=jnp.full((), -1, jnp.int32),
        pending=Pending(due=jnp.full((), -1, jnp.int32), stats_count=jnp.full((), -1, jnp.int32),
                        roots={k: jnp.copy(e) for k, e in eye.items()},
                        root_errors={k: jnp.zeros(size.padded, jnp.float32) for k, size in sizes.items()},
                        succeeded={k: jnp.zeros(size.padded, bool) for k, size in sizes.items()},
                        bases=identity_bases())
        if asynchronous else None)

  def momentum(buffers, directions):
    """The momentum buffers updated with `directions`, and the step they give (Nesterov or not)."""
    fresh = (1 - beta1) if hp['moving_average_for_momentum'] else 1.0
    buffers = [beta1 * m + fresh * d for m, d in zip(jax.tree.leaves(buffers), directions)]
    return ([beta1 * m + fresh * d for m, d in zip(buffers, directions)] if hp['nesterov'] else buffers), buffers

  def update_fn(updates, state, params=None):
    leaves, treedef = jax.tree.flatten(updates)
    p = blocking.plan([g.shape for g in leaves], hp, stack_multiple)
    grads = [g.astype(jnp.float32) for g in leaves]
    count = state.count
    blocks = blocking.stack(grads, p, constrain)

    stats = jax.lax.cond(count % hp['statistics_compute_steps'] == 0,
                         lambda s: preconditioning.update_statistics(s, blocks, p, beta2, dtype),
                         lambda s: s, state.stats)

    # args: (statistics, roots, root errors, rooted, bases); each branch gives (roots, errors, succeeded, bases).
    keep = lambda args: (args[1], args[2], jax.tree.map(jnp.zeros_like, args[3]), args[4])
    current = (stats, state.roots, state.root_errors, state.rooted, state.bases)
    if asynchronous:  # the roots computed outside the step take over at the update they are due for
      fresh = state.pending
      refresh = count == fresh.due
      install = lambda args: ({k: jnp.where(fresh.succeeded[k][:, None, None], fresh.roots[k], old)
                               for k, old in args[1].items()}, fresh.root_errors, fresh.succeeded, fresh.bases)
      roots, root_errors, succeeded, bases = jax.lax.cond(refresh, install, keep, current)
      roots_from = jnp.where(refresh, fresh.stats_count, state.roots_from)
    else:
      # Roots at `start`, then every k updates; none before it (unused there) unless Shampoo's
      # direction keeps its own momentum from the first update.
      refresh = (count % hp['preconditioning_compute_steps'] == 0) | (count == start)
      if not separate:
        refresh &= count >= start
      roots, root_errors, succeeded, bases = jax.lax.cond(
          refresh, lambda args: preconditioning.refresh_roots(args[0], args[1], args[4], p.masks, hp, dtype),
          keep, current)
      roots_from = jnp.where(refresh, count, state.roots_from)
    failed = jnp.where(refresh, sum(jnp.sum(~ok & ~p.sizes[k].padding) for k, ok in succeeded.items()),
                       0).astype(jnp.int32)

    graft, accumulators = grafting.directions(
        grads, jax.tree.leaves(state.graft) if state.graft is not None else None, count,
        graft_type=hp['graft_type'], beta2=beta2, epsilon=hp['diagonal_epsilon'])
    blockwise = hp['graft_type'] != 'none' and not layerwise
    graft_blocks = blocking.stack(graft, p, constrain) if blockwise else None
    preconditioned = {}
    for group, group_blocks in blocks.items():
      kept = p.kept(group)
      direction = preconditioning.precondition(group_blocks, group, kept, roots)
      if blockwise:
        direction = grafting.rescale(direction, graft_blocks[group], grafting.block_axes(kept))
      preconditioned[group] = constrain(direction) if blocking.spread(group) else direction
    shampoo_directions = [
        (grafting.rescale(blocking.unstack(preconditioned, layout), g_graft) if layerwise
         else blocking.unstack(preconditioned, layout)) if layout.preconditioned else g_graft
        for g_graft, layout in zip(graft, p.layouts)]

    if weight_decay > 0:
      if params is None:
        raise ValueError(optax.NO_PARAMS_MSG)
      weights = jax.tree.leaves(params)
      mask = jax.tree.leaves(weight_decay_mask(params)) if weight_decay_mask else [True] * len(weights)
      decay = lambda directions: [d + weight_decay * w.astype(jnp.float32) if keep else d
                                  for d, w, keep in zip(directions, weights, mask)]
      graft, shampoo_directions = decay(graft), decay(shampoo_directions)

    started = count >= start
    choose = lambda shampoo_steps, graft_steps: [
        jnp.where(started, s, g) if layout.preconditioned else g
        for s, g, layout in zip(shampoo_steps, graft_steps, p.layouts)]
    shampoo_momentum = graft_momentum = None
    if separate:  # each direction its own momentum from the first update; the step takes one of them
      shampoo_steps, shampoo_momentum = momentum(state.momentum, shampoo_directions)
      graft_steps, graft_momentum = momentum(state.graft_momentum, graft)
      directions = choose(shampoo_steps, graft_steps)
    elif beta1 > 0:
      directions, shampoo_momentum = momentum(state.momentum, choose(shampoo_directions, graft))
    else:
      directions = choose(shampoo_directions, graft)

    new_state = ShampooState(
        count=count + 1, stats=stats, roots=roots, root_errors=root_errors, bases=bases,
        failed_roots=state.failed_roots + failed,
        refresh_failures=jnp.where(refresh, failed, state.refresh_failures),
        root_refreshes=state.root_refreshes + refresh.astype(jnp.int32),
        rooted=jax.tree.map(jnp.logical_or, state.rooted, succeeded), padding=state.padding,
        graft=jax.tree.unflatten(treedef, accumulators) if accumulators is not None else None,
        momentum=None if shampoo_momentum is None else jax.tree.unflatten(treedef, shampoo_momentum),
        graft_momentum=None if graft_momentum is None else jax.tree.unflatten(treedef, graft_momentum),
        roots_from=roots_from, pending=state.pending)
    out = [d.astype(g.dtype) for d, g in zip(directions, leaves)]
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def find_state(opt_state) -> ShampooState | None:
  """The ShampooState inside an optimizer state (an optax chain's, possibly nested), or None."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ShampooState))
           if isinstance(x, ShampooState)]
  return found[0] if found else None


def _share(counts, total):
  return counts / jnp.maximum(total, 1)


def _real(state: ShampooState) -> tuple[dict[str, jax.Array], jax.Array]:
  """Per statistics stack, [n] True for the matrices of real blocks (not the identities padding the stack),
  and how many there are in all."""
  real = {k: ~padding for k, padding in state.padding.items()}
  return real, sum((jnp.sum(r) for r in real.values()), jnp.zeros((), jnp.int32))


def health(opt_state) -> dict[str, jax.Array]:
  """What every run logs: failed roots (cumulative and at the latest refresh, as a share of the
  matrices), the share of matrices that never got a root, whose blocks move along the graft
  direction alone, and the age of the roots the latest update used (updates since the statistics
  they come from; 0 before the first). Rejected roots are silent otherwise: Shampoo quietly becomes its graft.
  The identity blocks that pad the stacks count nowhere."""
  state = find_state(opt_state)
  if state is None:
    return {}
  real, total = _real(state)
  unrooted = sum((jnp.sum(~state.rooted[k] & r) for k, r in real.items()), jnp.zeros((), jnp.int32))
  return {'shampoo_failed_roots_total': state.failed_roots,
          'shampoo_refresh_failed_share': _share(state.refresh_failures, total),
          'shampoo_graft_share': _share(unrooted, total),
          'shampoo_roots_age': jnp.where(state.roots_from >= 0, state.count - 1 - state.roots_from, 0)}


def metrics(opt_state) -> dict[str, jax.Array]:
  """Root errors of the real blocks and refresh count, beside `health`; logged when asked
  (log_optimizer_metrics)."""
  state = find_state(opt_state)
  if state is None:
    return {}
  real, total = _real(state)
  errors = [jnp.where(jnp.isfinite(e) & real[k], e, 0.0) for k, e in state.root_errors.items()]
  errors = jnp.concatenate(errors) if errors else jnp.zeros(1)
  return {'shampoo_max_root_error': jnp.max(errors), 'shampoo_mean_root_error': _share(jnp.sum(errors), total),
          'shampoo_root_refreshes_total': state.root_refreshes}


def shampoo(learning_rate: optax.ScalarOrSchedule, *, stack_multiple: int = 1,
            **hyperparameters) -> optax.GradientTransformation:
  """Shampoo with a learning rate (or schedule): updates are -lr x direction."""
  return optax.chain(scale_by_shampoo(stack_multiple=stack_multiple, **hyperparameters),
                     optax.scale_by_learning_rate(learning_rate))
