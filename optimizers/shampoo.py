"""Shampoo with the practical ingredients of Anil et al. (2020), as an optax transformation.

Written here from the paper (arXiv 2002.09018) and first principles.

Per parameter, a static layout decides how it is preconditioned:
  * dimensions of size 1 are dropped and adjacent small dimensions merged while their
    product stays <= `merge_small_dims_block_size` (conv [3,3,64,64] -> [576, 64]);
  * parameters of rank <= 1 (biases, norm scales) get the graft direction only, and so
    do those with a dimension above `skip_preconditioning_dim_size_gt` (embedding
    tables), unless `precondition_embeddings`: then only their other dimensions get
    statistics (a [vocab, d] table: one d x d statistic, shared by all rows), and
    grafting sets the norm of each row (each slice along the skipped dimension), so a
    rarely seen row keeps the graft's step size while the statistic turns its direction;
  * the others are cut into blocks of at most `block_size` per dimension (the last block
    zero-padded; a skipped dimension is one block); a block with k preconditioned
    dimensions has k statistics L_i <- beta2 L_i + (1-beta2) G_(i) G_(i)^T (beta2 = 1:
    plain sums), and its direction is G x_1 L_1^{-1/2k} ... x_k L_k^{-1/2k}.

Layout for speed and sharding: statistics of all parameters are stacked per
(block size, exponent) bucket into [n, b, b] arrays, so a statistics update and a
root refresh are one batched op per bucket, and the trainer can shard the stacks.

Roots: coupled Newton iteration, scaled before each step (or eigh), damped by
`matrix_epsilon` (times the largest eigenvalue, by power iteration, when
`relative_matrix_epsilon`); a root with
error >= `inverse_failure_threshold`, or not finite, keeps the previous one. Roots are
refreshed at `start_preconditioning_step` and then every `preconditioning_compute_steps`
updates, inside the jitted step with `lax.cond` (never before the start: unused there).
Grafting rescales each block of the Shampoo direction to the norm of the graft's direction
for that block (each row, along a skipped dimension); before `start_preconditioning_step`
the graft direction is used alone.
"""

import dataclasses
import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from errors import ConfigError, check_range

DEFAULTS = dict(
    block_size=128,
    beta1=0.9,                          # momentum on the grafted direction; 0 disables
    beta2=0.999,                        # statistics EMA; 1.0 = Adagrad-style sums
    diagonal_epsilon=1e-10,             # graft (Adagrad / RMSprop) denominator
    matrix_epsilon=1e-6,                # root damping
    relative_matrix_epsilon=True,       # damping x largest eigenvalue of the statistic
    start_preconditioning_step=10,      # graft alone before this many updates
    preconditioning_compute_steps=1,    # refresh roots every k updates
    statistics_compute_steps=1,         # update statistics every k updates
    graft_type='rmsprop_normalized',    # none | sgd | adagrad | rmsprop | <those>_normalized
    nesterov=True,
    moving_average_for_momentum=False,  # m = b1 m + (1-b1) u instead of b1 m + u
    exponent_override=0,                # root exponent p for every statistic; 0 = 2 x rank
    inverse_failure_threshold=0.1,      # Newton error above this keeps the previous root
    skip_preconditioning_dim_size_gt=4096,
    precondition_embeddings=False,      # statistics on the other dims of a parameter with a skipped dim
    merge_small_dims_block_size=4096,
    root_method='newton',               # newton | eigh
    newton_iterations=100,
    newton_tolerance=1e-6,
    statistics_dtype='float32',         # float32 | bfloat16 (statistics and roots)
)
GRAFT_TYPES = ('none', 'sgd', 'adagrad', 'rmsprop', 'sgd_normalized', 'adagrad_normalized',
               'rmsprop_normalized')
ROOT_METHODS = ('newton', 'eigh')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
POWER_ITERATIONS = 50


def _validate(hp: dict) -> None:
  unknown = set(hp) - set(DEFAULTS)
  if unknown:
    raise ConfigError(f'unknown shampoo hyperparameters: {", ".join(sorted(unknown))}')
  check_range(hp, 'block_size', 1, None)
  check_range(hp, 'beta1', 0.0, 1.0)
  check_range(hp, 'beta2', 0.0, 1.0, high_inclusive=True)
  for field in ('diagonal_epsilon', 'matrix_epsilon', 'start_preconditioning_step',
                'exponent_override', 'newton_tolerance'):
    check_range(hp, field, 0, None)
  for field in ('preconditioning_compute_steps', 'statistics_compute_steps', 'newton_iterations',
                'skip_preconditioning_dim_size_gt', 'merge_small_dims_block_size'):
    check_range(hp, field, 1, None)
  if hp['inverse_failure_threshold'] <= 0:
    raise ConfigError(f'optimizer.inverse_failure_threshold={hp["inverse_failure_threshold"]} must be > 0')
  for field, choices in (('graft_type', GRAFT_TYPES), ('root_method', ROOT_METHODS),
                         ('statistics_dtype', tuple(DTYPES))):
    if hp[field] not in choices:
      raise ConfigError(f'optimizer.{field}={hp[field]!r}: choose one of {", ".join(choices)}')


# ---------------------------------------------------------------- inverse p-th roots

def _max_eigenvalue(a: jax.Array) -> jax.Array:
  """Largest eigenvalue of each PSD matrix in a [n, s, s] stack, by power iteration."""
  v = jax.random.normal(jax.random.PRNGKey(0), a.shape[:-1], a.dtype)

  def step(_, v):
    w = jnp.einsum('nij,nj->ni', a, v)
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-30)

  v = jax.lax.fori_loop(0, POWER_ITERATIONS, step, v / jnp.linalg.norm(v, axis=-1, keepdims=True))
  return jnp.einsum('ni,nij,nj->n', v, a, v)


def _newton_map(mu, p: int):
  """Where one coupled Newton step sends an eigenvalue mu of M (a polynomial in M)."""
  return mu * ((p + 1 - mu) / p) ** p


@functools.lru_cache(maxsize=None)
def _scaling_table(p: int) -> tuple[np.ndarray, np.ndarray]:
  """Best pre-step scale s of M, as a function of log10 of a lower bound a on its spectrum.

  M's spectrum lies in [a, 1]. Scaling M (and H by s^(1/p), which keeps H^p A = M) to
  [s a, s] before a step leaves the spectrum in [min(f(s a), f(s)), 1], f = `_newton_map`
  (its maximum is f(1) = 1); s maximising that minimum lifts a small eigenvalue
  s (1 + 1/p)^p-fold instead of (1 + 1/p)^p-fold. s is at most 0.7 (p + 1): the iteration
  diverges at p + 1, and the margin absorbs an underestimated largest eigenvalue.
  """
  log_a = np.linspace(-8.0, 0.0, 161)
  s = np.linspace(1.0, 0.7 * (p + 1), 4001)[None, :]
  worst = np.minimum(_newton_map(s * 10.0 ** log_a[:, None], p), _newton_map(s, p))
  return log_a, s[0, np.argmax(worst, axis=1)]


def _newton_root(a, p: int, iterations: int, tolerance: float, largest, smallest):
  """Coupled Newton iteration for a^{-1/p}: H -> a^{-1/p} while M = H^p a -> I.

  `largest` ([n]) is each matrix's largest eigenvalue (estimated), `smallest` ([n]) a lower
  bound on its smallest (its damping). M starts as a / largest, its spectrum in
  [smallest / largest, 1]. Unscaled, an eigenvalue far below 1 grows only (1 + 1/p)^p-fold per
  step (p = 4: 13 steps at condition number 1e4, 17 at 1e6); so while the tracked lower bound
  of M's spectrum is below 0.9, each step first scales M by `_scaling_table` (p = 4: 10 steps
  at either condition number). The bound is where the step maps the previous one, or
  1 - ||M - I||_F once that is larger. The error max|M - I| need not fall every step (a scaled
  step may raise it, and so may the first unscaled one), so a matrix stops at the tolerance or
  once its error grows by more than 20% in a later unscaled step (float32 round-off taking
  over), and keeps its best iterate.
  """
  identity = jnp.eye(a.shape[-1], dtype=a.dtype)
  m = a / largest[:, None, None]
  h = (largest ** (-1.0 / p))[:, None, None] * identity
  log_a, scales = (jnp.asarray(x, a.dtype) for x in _scaling_table(p))

  def error_and_bound(m, lower):
    """max|M - I|, and the spectrum's lower bound raised to 1 - ||M - I||_F where that is larger."""
    distance = m - identity
    frobenius = jnp.sqrt(jnp.sum(jnp.square(distance), axis=(-2, -1)))
    return jnp.max(jnp.abs(distance), axis=(-2, -1)), jnp.maximum(lower, 1 - frobenius)

  error, lower = error_and_bound(m, jnp.clip(smallest / largest, 10.0 ** log_a[0], 1.0))

  def keep_going(carry):
    i, *_, active = carry
    return (i < iterations) & jnp.any(active)

  def step(carry):
    i, m, h, lower, error, best_h, best_error, active = carry
    scaled = lower < 0.9
    s = jnp.where(scaled, jnp.interp(jnp.log10(lower), log_a, scales), 1.0)
    expand = lambda x: x[:, None, None]
    scaled_m = expand(s) * m
    m_i = ((p + 1) * identity - scaled_m) / p
    new_m = jnp.linalg.matrix_power(m_i, p) @ scaled_m
    new_h = expand(s ** (1.0 / p)) * h @ m_i
    new_error, new_lower = error_and_bound(
        new_m, jnp.minimum(_newton_map(s * lower, p), _newton_map(s, p)))
    better = active & (new_error < best_error)
    return (i + 1, jnp.where(expand(active), new_m, m), jnp.where(expand(active), new_h, h),
            jnp.where(active, new_lower, lower), jnp.where(active, new_error, error),
            jnp.where(expand(better), new_h, best_h), jnp.where(better, new_error, best_error),
            active & (new_error > tolerance) & (scaled | (i == 0) | (new_error < 1.2 * error)))

  carry = (0, m, h, lower, error, h, error, error > tolerance)
  *_, best_h, best_error, _ = jax.lax.while_loop(keep_going, step, carry)
  return best_h, best_error


def _eigh_root(a, p: int):
  eigenvalues, vectors = jnp.linalg.eigh(a)
  powered = jnp.maximum(eigenvalues, 1e-30) ** (-1.0 / p)
  roots = jnp.einsum('nij,nj,nkj->nik', vectors, powered, vectors)
  return roots, jnp.where(jnp.all(eigenvalues > 0, axis=-1), 0.0, jnp.inf)


def inverse_pth_root(matrices, p: int, *, epsilon: float, relative_epsilon: bool,
                     method: str = 'newton', iterations: int = 100, tolerance: float = 1e-6,
                     padding=None):
  """(A + eps I)^{-1/p} for each symmetric PSD A of a [n, s, s] stack, and each root's error.

  eps is `epsilon` x lambda_max(A) when `relative_epsilon`. `padding` ([n, s], 1 where a
  coordinate only pads a ragged block) lifts those diagonal entries to lambda_max so the
  padding cannot worsen the conditioning; the real block is unaffected (block-diagonal).
  An all-zero matrix has no meaningful root: its error is reported as infinite.
  """
  a = matrices.astype(jnp.float32)
  largest = _max_eigenvalue(a)
  damping = epsilon * largest if relative_epsilon else jnp.full_like(largest, epsilon)
  diagonal = damping[:, None] * jnp.ones(a.shape[:-1], a.dtype)
  if padding is not None:
    diagonal = diagonal + padding * largest[:, None]
  a = a + jax.vmap(jnp.diag)(diagonal)
  if method == 'eigh':
    roots, errors = _eigh_root(a, p)
  else:
    roots, errors = _newton_root(a, p, iterations, tolerance, largest + damping, damping)
  return roots, jnp.where(largest > 0, errors, jnp.inf)


# ---------------------------------------------------------------- static layouts

def _merge_dims(shape: tuple[int, ...], limit: int) -> tuple[int, ...]:
  merged: list[int] = []
  for d in (d for d in shape if d != 1):
    if merged and merged[-1] * d <= limit:
      merged[-1] *= d
    else:
      merged.append(d)
  return tuple(merged)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How one parameter is blocked, and where its statistics sit in the bucket stacks."""
  shape: tuple[int, ...]
  merged: tuple[int, ...]
  block: tuple[int, ...] = ()
  grid: tuple[int, ...] = ()
  slots: tuple[tuple[str, int] | None, ...] = ()  # per merged dim: (bucket key, offset); None: skipped

  @property
  def preconditioned(self) -> bool:
    return any(self.slots)

  @property
  def num_blocks(self) -> int:
    return math.prod(self.grid)


def _bucket_key(size: int, exponent: int) -> str:
  return f'{size:05d}_p{exponent}'


def _plan(shapes, hp) -> tuple[list[_Layout], dict[str, int], dict[str, np.ndarray]]:
  """Layouts per parameter, bucket sizes, and padding masks per bucket."""
  layouts, counts, masks = [], {}, {}
  limit = hp['skip_preconditioning_dim_size_gt']
  for shape in shapes:
    merged = _merge_dims(tuple(shape), hp['merge_small_dims_block_size'])
    kept = [d <= limit for d in merged]
    if len(shape) <= 1 or not any(kept) or (not all(kept) and not hp['precondition_embeddings']):
      layouts.append(_Layout(tuple(shape), merged))
      continue
    block = tuple(min(d, hp['block_size']) if keep else d for d, keep in zip(merged, kept))
    grid = tuple(-(-d // b) for d, b in zip(merged, block))
    exponent = hp['exponent_override'] or 2 * sum(kept)
    slots = []
    for i, (d, b, g, keep) in enumerate(zip(merged, block, grid, kept)):
      if not keep:
        slots.append(None)
        continue
      key = _bucket_key(b, exponent)
      slots.append((key, counts.get(key, 0)))
      counts[key] = counts.get(key, 0) + math.prod(grid)
      # Padding rows: in the last block along dim i, coordinates past d.
      along = np.array([index[i] for index in itertools.product(*map(range, grid))])
      valid = np.where(along[:, None] == g - 1, (d - (g - 1) * b), b)
      masks.setdefault(key, []).append((np.arange(b)[None, :] >= valid).astype(np.float32))
    layouts.append(_Layout(tuple(shape), merged, block, grid, tuple(slots)))
  return layouts, counts, {k: np.concatenate(v) for k, v in masks.items()}


def preconditioner_kind(shape: tuple[int, ...], hp: dict) -> str:
  """How `shape` is preconditioned: 'graft' (not at all), 'blocked' (a dimension cut into blocks),
  'whole' (one unblocked statistic per dimension, roots' exponents summing to 1/2: the
  Kronecker-factored setting that theory, e.g. muP's scaling, describes) or 'merged' (other)."""
  layout = _plan([shape], hp)[0][0]
  if not layout.preconditioned:
    return 'graft'
  if layout.block != layout.merged:
    return 'blocked'
  kept = [d for d in shape if d != 1]
  exponent = int(next(slot for slot in layout.slots if slot)[0].split('_p')[1])
  return 'whole' if list(layout.merged) == kept and all(layout.slots) and 2 * len(kept) == exponent else 'merged'


def _to_blocks(x, layout: _Layout):
  """[*shape] -> [num_blocks, *block], zero-padding ragged edges."""
  k = len(layout.merged)
  x = x.reshape(layout.merged)
  x = jnp.pad(x, [(0, g * b - d) for d, b, g in zip(layout.merged, layout.block, layout.grid)])
  x = x.reshape([n for g, b in zip(layout.grid, layout.block) for n in (g, b)])
  x = x.transpose(list(range(0, 2 * k, 2)) + list(range(1, 2 * k, 2)))
  return x.reshape((layout.num_blocks,) + layout.block)


def _from_blocks(x, layout: _Layout):
  k = len(layout.merged)
  x = x.reshape(layout.grid + layout.block)
  x = x.transpose([j for i in range(k) for j in (i, k + i)])
  x = x.reshape([g * b for g, b in zip(layout.grid, layout.block)])
  x = x[tuple(slice(0, d) for d in layout.merged)]
  return x.reshape(layout.shape)


def _block_statistics(blocks, slots):
  """G_(i) G_(i)^T for every mode i of a [n, b_1..b_k] stack of blocks that has a slot.

  One contraction over all other modes per i, with no explicit unfolding: a transposed
  copy of every block would cost ~20% of the statistics time on CPU.
  """
  modes = 'abcdefghijklm'[:blocks.ndim - 1]
  return [jnp.einsum(f'n{modes},n{modes.replace(m, "z")}->n{m}z', blocks, blocks)
          for m, slot in zip(modes, slots) if slot]


def _precondition(blocks, roots):
  """blocks x_1 roots[0] ... x_k roots[k-1] (None: that mode is left as is).

  Contracting mode 1 each time (or moving it last) cycles the modes back into order.
  """
  for root in roots:
    blocks = (jnp.moveaxis(blocks, 1, -1) if root is None
              else jnp.einsum('nj...,naj->n...a', blocks, root))
  return blocks


# ---------------------------------------------------------------- the transformation

class ShampooState(NamedTuple):
  count: jax.Array            # updates applied so far
  stats: dict[str, jax.Array]  # bucket -> [n, b, b]
  roots: dict[str, jax.Array]  # bucket -> [n, b, b] inverse roots in use
  root_errors: dict[str, jax.Array]  # bucket -> [n] error of the latest root computation
  failed_roots: jax.Array     # matrices whose root failed and kept the previous one (cumulative)
  root_refreshes: jax.Array   # times the roots were recomputed
  graft: Any                  # per-parameter Adagrad / RMSprop accumulators, or None
  momentum: Any               # per-parameter momentum, or None


def _norm(x, axes):
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


def scale_by_shampoo(**hyperparameters) -> optax.GradientTransformation:
  """Shampoo's (grafted, momentum) direction; chain with a learning rate to step."""
  hp = {**DEFAULTS, **hyperparameters}
  _validate(hp)
  dtype = DTYPES[hp['statistics_dtype']]
  beta1, beta2 = hp['beta1'], hp['beta2']
  graft_base = hp['graft_type'].removesuffix('_normalized')
  normalized = hp['graft_type'].endswith('_normalized')
  start = hp['start_preconditioning_step']

  def ema(old, new):
    return old + new if beta2 == 1.0 else beta2 * old + (1 - beta2) * new

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    _, counts, _ = _plan([p.shape for p in leaves], hp)
    zeros = {k: jnp.zeros((n, int(k[:5]), int(k[:5])), dtype) for k, n in counts.items()}
    eye = {k: jnp.broadcast_to(jnp.eye(int(k[:5]), dtype=dtype), v.shape) for k, v in zeros.items()}
    per_param = lambda: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return ShampooState(
        count=jnp.zeros((), jnp.int32), stats=zeros, roots=eye,
        root_errors={k: jnp.zeros(v.shape[0], jnp.float32) for k, v in zeros.items()},
        failed_roots=jnp.zeros((), jnp.int32), root_refreshes=jnp.zeros((), jnp.int32),
        graft=per_param() if graft_base in ('adagrad', 'rmsprop') else None,
        momentum=per_param() if beta1 > 0 else None)

  def graft_directions(grads, accumulators, count):
    if normalized:
      grads = [g / jnp.maximum(jnp.linalg.norm(g), 1e-30) for g in grads]
    if graft_base in ('none', 'sgd'):
      return grads, accumulators
    if graft_base == 'adagrad':
      accumulators = [a + g * g for a, g in zip(accumulators, grads)]
      second_moments = accumulators
    else:  # RMSprop, bias-corrected as in Adam: uncorrected, the first steps are 1/sqrt(1-beta2) too long
      accumulators = [ema(a, g * g) for a, g in zip(accumulators, grads)]
      correction = 1.0 if beta2 == 1.0 else 1 - beta2 ** (count + 1).astype(jnp.float32)
      second_moments = [a / correction for a in accumulators]
    directions = [g / (jnp.sqrt(v) + hp['diagonal_epsilon']) for v, g in zip(second_moments, grads)]
    return directions, accumulators

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    layouts, _, masks = _plan([g.shape for g in leaves], hp)
    grads = [g.astype(jnp.float32) for g in leaves]
    count = state.count
    blocks = [_to_blocks(g, l) if l.preconditioned else None for g, l in zip(grads, layouts)]

    def new_statistics(stats):
      parts = {key: [] for key in stats}
      for b, layout in zip(blocks, layouts):
        slots = [slot for slot in layout.slots if slot]
        for (key, _), statistic in zip(slots, _block_statistics(b, layout.slots) if b is not None else []):
          parts[key].append(statistic)
      return {k: ema(stats[k].astype(jnp.float32), jnp.concatenate(parts[k])).astype(dtype)
              for k in stats}

    stats = jax.lax.cond(count % hp['statistics_compute_steps'] == 0,
                         new_statistics, lambda s: s, state.stats)

    def new_roots(args):
      stats, roots, errors = args
      out_roots, out_errors, failed = {}, {}, jnp.zeros((), jnp.int32)
      for key in stats:
        computed, error = inverse_pth_root(
            stats[key], int(key.split('_p')[1]), epsilon=hp['matrix_epsilon'],
            relative_epsilon=hp['relative_matrix_epsilon'], method=hp['root_method'],
            iterations=hp['newton_iterations'], tolerance=hp['newton_tolerance'],
            padding=jnp.asarray(masks[key]))
        ok = (error < hp['inverse_failure_threshold']) & jnp.all(jnp.isfinite(computed), axis=(-2, -1))
        out_roots[key] = jnp.where(ok[:, None, None], computed.astype(dtype), roots[key])
        out_errors[key] = error
        failed += jnp.sum(~ok)
      return out_roots, out_errors, failed

    # Roots are only used from `start` on: none before, one at `start`, then every k updates.
    refresh = (count >= start) & ((count % hp['preconditioning_compute_steps'] == 0) | (count == start))
    roots, root_errors, failed = jax.lax.cond(
        refresh, new_roots, lambda args: (args[1], args[2], jnp.zeros((), jnp.int32)),
        (stats, state.roots, state.root_errors))

    graft, accumulators = graft_directions(
        grads, jax.tree.leaves(state.graft) if state.graft is not None else None, count)
    directions = []
    for g_graft, b, layout in zip(graft, blocks, layouts):
      if not layout.preconditioned:
        directions.append(g_graft)
        continue
      preconditioned = _precondition(b, [
          roots[slot[0]][slot[1]:slot[1] + layout.num_blocks].astype(jnp.float32) if slot else None
          for slot in layout.slots])
      if graft_base != 'none':  # per block, and per row of a skipped dimension
        axes = tuple(1 + i for i, slot in enumerate(layout.slots) if slot)
        shampoo_norm = _norm(preconditioned, axes)
        scale = jnp.where(shampoo_norm > 0, _norm(_to_blocks(g_graft, layout), axes) / shampoo_norm, 0.0)
        preconditioned = preconditioned * scale
      directions.append(jnp.where(count >= start, _from_blocks(preconditioned, layout), g_graft))

    momentum = None
    if beta1 > 0:
      fresh = (1 - beta1) if hp['moving_average_for_momentum'] else 1.0
      momentum = [beta1 * m + fresh * d for m, d in zip(jax.tree.leaves(state.momentum), directions)]
      directions = ([beta1 * m + fresh * d for m, d in zip(momentum, directions)]
                    if hp['nesterov'] else momentum)
      momentum = jax.tree.unflatten(treedef, momentum)

    new_state = ShampooState(
        count=count + 1, stats=stats, roots=roots, root_errors=root_errors,
        failed_roots=state.failed_roots + failed,
        root_refreshes=state.root_refreshes + refresh.astype(jnp.int32),
        graft=jax.tree.unflatten(treedef, accumulators) if accumulators is not None else None,
        momentum=momentum)
    out = [d.astype(g.dtype) for d, g in zip(directions, leaves)]
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def metrics(opt_state) -> dict[str, jax.Array]:
  """Preconditioner health from any optimizer state that contains a ShampooState."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ShampooState))
           if isinstance(x, ShampooState)]
  if not found:
    return {}
  state = found[0]
  errors = jnp.concatenate([e for e in state.root_errors.values()]) if state.root_errors else jnp.zeros(1)
  finite = jnp.where(jnp.isfinite(errors), errors, 0.0)
  return {'shampoo_max_root_error': jnp.max(finite), 'shampoo_mean_root_error': jnp.mean(finite),
          'shampoo_failed_roots_total': state.failed_roots,
          'shampoo_root_refreshes_total': state.root_refreshes}


def shampoo(learning_rate: optax.ScalarOrSchedule, **hyperparameters) -> optax.GradientTransformation:
  """Shampoo with a learning rate (or schedule): updates are -lr x direction."""
  return optax.chain(scale_by_shampoo(**hyperparameters),
                     optax.scale_by_learning_rate(learning_rate))
