"""K-FAC (Martens & Grosse 2015) through kfac-jax, as one optax transformation.

kfac-jax's own `Optimizer` compiles its own step; its `OptaxPreconditioner`
exposes the same curvature machinery to optax. This adapter wraps the
preconditioner so that K-FAC runs inside the trainer's single jitted, sharded
step: each update first refreshes the Kronecker factors from the registered loss
(every `curvature_update_period` steps, from `curvature_batch_size` of the batch's
examples) and their inverses (every `inverse_update_period`), then preconditions the
gradient, then applies momentum. kfac-jax's optax interface refuses a curvature period
above 1 (its cond would stop XLA sharing the forward pass with the gradient's); this
adapter's curvature pass never shares it, so the period is ours: the factors are
updated under a cond, and a convolutional net whose curvature dominates the step
(the tiny ResNet: 17.5 s a step on 2 CPU cores, against 0.08 s for Adam) pays for it
on those steps only.
The curvature pass needs the loss function and the batch, which the trainer
passes as the optax extra argument `loss_args = (params, model_state, rng, batch)`.

Layers are found by kfac-jax's graph matcher (dense, conv, scale-and-shift);
parameters it cannot match get diagonal blocks, and so does a layer with a factor
larger than `max_factor_dim` (`layer_blocks`). `describe_blocks` says which.
kfac-jax's patterns only match layers that use their float32 parameters directly;
a bfloat16 model (Flax casts kernel and bias to bfloat16 before the matmul or
convolution) would leave every dense and conv layer to a diagonal block, so each of
those patterns is also given with its parameters cast to bfloat16
(`graph_patterns`), and the Kronecker factors of such layers are accumulated from
the bfloat16 activations and output gradients in float32 (`layer_blocks`).
On a mesh the factors are split by rows like other square optimizer state, and each
block gathers its factors whole to invert them, and keeps the inverses whole (`layer_blocks`).
The matcher does not look inside jax.checkpoint regions either (a task's `remat`), so
the loss is given to kfac-jax with those regions spliced in (`inline_remat`): the
curvature pass recomputes nothing, while the gradient the trainer takes keeps its remat.

Damping is fixed, or adapted by the Levenberg-Marquardt rule of kfac-jax's own
`Optimizer` (`adaptive_damping`): every `damping_adaptation_interval` steps the
reduction ratio rho = (L(theta + delta) - L(theta)) / (g'delta + delta'C delta / 2), with
delta the step this update takes (learning rate and momentum included) and C the
factored curvature, moves the damping down by decay**interval when rho > 3/4 and up
when rho < 1/4. That costs two more loss evaluations on the step's batch per
adaptation. Not available in this path: kfac-jax's learning-rate and momentum
adaptation (its quadratic model replaces the schedule); `norm_constraint` (KL
clipping) is the other stabiliser.
"""

import collections
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.extend as jex
import jax.numpy as jnp
import optax
from absl import logging

from errors import ConfigError, check_range
from optimizers.shampoo.roots import HIGHEST, stacked_eigh

# The hyperparameters scale_by_kfac reads; their defaults: configs/optimizer_defaults.py.
FIELDS = ('damping', 'curvature_ema', 'curvature_update_period', 'curvature_batch_size', 'inverse_update_period',
          'estimation_mode', 'momentum', 'nesterov', 'norm_constraint', 'adaptive_damping',
          'damping_adaptation_interval', 'damping_adaptation_decay', 'min_damping', 'max_factor_dim')
RHO_LOW, RHO_HIGH = 0.25, 0.75  # kfac-jax's thresholds: raise the damping below, lower it above
ESTIMATION_MODES = ('fisher_gradients', 'fisher_curvature_prop', 'fisher_exact', 'fisher_empirical',
                    'ggn_curvature_prop', 'ggn_exact')


def _compatible_eval_jaxpr_eqn(eqn, in_values):
  """kfac-jax 0.0.8 expects Primitive.get_bind_params to return (subfuns, params);
  current JAX returns the params alone (subfuns inside them). Accept both."""
  bind = eqn.primitive.get_bind_params(eqn.params)
  subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
  with jex.source_info_util.user_context(eqn.source_info.traceback):
    output = eqn.primitive.bind(*subfuns, *in_values, **params)
  return output if isinstance(output, list) else [output]


@functools.cache
def _remat_primitive():
  """jax.checkpoint's primitive (named `remat2` in JAX 0.10; the name has changed before)."""
  return jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive


def _eval_inlined(jaxpr, consts, args) -> list:
  """Evaluates `jaxpr`, running the body of every jax.checkpoint equation as plain equations."""
  env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
  read = lambda var: var.val if isinstance(var, jex.core.Literal) else env[var]
  for eqn in jaxpr.eqns:
    values = [read(var) for var in eqn.invars]
    if eqn.primitive is _remat_primitive():
      outputs = _eval_inlined(eqn.params['jaxpr'], (), values)
    else:
      outputs = _compatible_eval_jaxpr_eqn(eqn, values)
    env.update(zip(eqn.outvars, outputs))
  return [read(var) for var in jaxpr.outvars]


def inline_remat(fn: Callable) -> Callable:
  """`fn` traced with its jax.checkpoint regions spliced into the surrounding computation.

  kfac-jax's graph matcher does not look inside such regions, so every layer of a rematerialized
  block would get a diagonal block. Recomputing them would save nothing in the curvature pass
  anyway: kfac-jax keeps every layer's inputs and output gradients to build the factors."""
  def inlined(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outputs = _eval_inlined(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)
  return inlined


def inverse_by_eigh(matrix):
  """The inverse of a symmetric positive definite matrix as V diag(1 / lambda) V^T."""
  eigenvalues, vectors = stacked_eigh(matrix[None])
  return jnp.einsum('nij,nj,nkj->ik', vectors, 1.0 / eigenvalues, vectors, precision=HIGHEST)


def _psd_inverse(lu_inverse):
  """kfac-jax's inverse of each damped Kronecker factor (`lu_inverse`, an LU solve), but on TPU by
  `inverse_by_eigh`: XLA's TPU compiler expands every LU inverse into a blocked program of its own,
  62 s to compile for one 2304-wide factor on a v3-256, and ResNet-50's 54 layers have 108 factors;
  a Jacobi eigendecomposition compiles in 3-5 s up to 4608 wide (docs/kfac.md)."""
  def inverse(matrix):
    # as kfac-jax's: a NaN or inf factor gives NaNs
    by_eigh = lambda m: jax.lax.cond(jnp.all(jnp.isfinite(m)), inverse_by_eigh, lambda m: jnp.full_like(m, jnp.nan), m)
    return jax.lax.platform_dependent(matrix, tpu=by_eigh, default=lu_inverse)
  return inverse


@functools.cache
def kfac_jax():
  """The kfac_jax module, with the JAX-compatibility shim and the TPU factor inverse
  (`_psd_inverse`) installed once."""
  import kfac_jax as module
  from kfac_jax._src import tag_graph_matcher
  from kfac_jax._src.utils import math as kfac_math
  tag_graph_matcher.eval_jaxpr_eqn = _compatible_eval_jaxpr_eqn
  kfac_math.psd_inv = _psd_inverse(kfac_math.psd_inv)
  return module


class LossContext(NamedTuple):
  """What K-FAC needs from the task: its loss and example arguments to trace it with."""
  value_fn: Callable[..., jax.Array]  # (params, model_state, rng, batch) -> scalar loss
  example_args: tuple                 # (params, model_state, rng, batch), arrays or shapes
  task_name: str


class KfacState(NamedTuple):
  preconditioner: Any  # kfac_jax OptaxPreconditionState
  damping: jax.Array   # in use (fixed, or the latest adaptation)
  rho: jax.Array       # reduction ratio at the latest adaptation (NaN before the first)


def _validate(cfg) -> None:
  check_range(cfg, 'damping', 0.0, None)
  check_range(cfg, 'curvature_ema', 0.0, 1.0)
  check_range(cfg, 'curvature_update_period', 1, None)
  check_range(cfg, 'curvature_batch_size', 0, None)
  check_range(cfg, 'inverse_update_period', 1, None)
  check_range(cfg, 'momentum', 0.0, 1.0)
  check_range(cfg, 'norm_constraint', 0.0, None)
  check_range(cfg, 'damping_adaptation_interval', 1, None)
  check_range(cfg, 'damping_adaptation_decay', 0.0, 1.0)
  check_range(cfg, 'min_damping', 0.0, None)
  check_range(cfg, 'max_factor_dim', 0, None)
  if cfg['max_factor_dim'] != int(cfg['max_factor_dim']):
    raise ConfigError(f'optimizer.max_factor_dim={cfg["max_factor_dim"]} must be a whole number of rows')
  if cfg['damping_adaptation_decay'] == 0:
    raise ConfigError('optimizer.damping_adaptation_decay=0: the damping would jump to 0 or infinity')
  if cfg['damping'] == 0:
    raise ConfigError('optimizer.damping=0: K-FAC needs positive damping to invert its factors')
  if cfg['estimation_mode'] not in ESTIMATION_MODES:
    raise ConfigError(f'optimizer.estimation_mode={cfg["estimation_mode"]!r}: '
                      f'choose one of {", ".join(ESTIMATION_MODES)}')


def _with_cast_parameters(pattern, dtype: str):
  """`pattern` as a model computing in `dtype` runs it: parameters cast to `dtype`, inputs already in it."""
  def compute(inputs, params):
    return pattern.compute_func(inputs, [p.astype(dtype) for p in params])
  inputs, params = pattern.example_args
  return kfac_jax().tag_graph_matcher.GraphPattern(
      name=f'{pattern.name}_{dtype}', tag_primitive=pattern.tag_primitive, compute_func=compute,
      parameters_extractor_func=pattern.parameters_extractor_func,
      example_args=[jnp.asarray(inputs, dtype), params], in_values_preprocessor=pattern.in_values_preprocessor)


@functools.cache
def graph_patterns() -> tuple:
  """kfac-jax's layer patterns, then its dense and conv ones as a bfloat16 model runs them (the only
  low-precision activation dtype tasks accept)."""
  defaults = kfac_jax().tag_graph_matcher.DEFAULT_GRAPH_PATTERNS
  kronecker = [p for p in defaults if 'dense' in p.name or p.name.startswith('conv2d')]
  return defaults + tuple(_with_cast_parameters(p, 'bfloat16') for p in kronecker)


def _float32_statistics(block_class):
  """`block_class` computing its factor statistics in the parameters' dtype (float32) from low-precision
  activations and gradients, rather than rounding every batch's statistics to bfloat16."""
  class Block(block_class):
    def update_curvature_matrix_estimate(self, state, estimation_data, *args, **kwargs):
      estimation_data = jax.tree.map(lambda x: x.astype(self.dtype), estimation_data)
      return super().update_curvature_matrix_estimate(state, estimation_data, *args, **kwargs)
  Block.__name__ = Block.__qualname__ = block_class.__name__
  return Block


def _inverted_whole(block_class, replicated: jax.sharding.Sharding):
  """`block_class` gathering its state onto every device before it computes the inverses. The
  factors are split by rows (trainer/partitioning.py); XLA partitions an inverse of a split matrix
  into a loop of collective permutes (2,893 for one BERT-Large layer): with them a one-layer TPU
  compile did not finish in 25 minutes, without them it took 6. Whole, every device inverts every
  factor, at most 4097 x 4097 each."""
  class Block(block_class):
    def _update_cache(self, state, *args, **kwargs):
      whole = lambda tree: jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, replicated), tree)
      return whole(super()._update_cache(whole(state), *args, **kwargs))  # in and out: XLA propagates both ways
  Block.__name__ = Block.__qualname__ = block_class.__name__
  return Block


@functools.cache
def _repeated_dense_diagonal():
  """kfac-jax's dense diagonal for a dense layer applied at every position of a sequence: the
  squares are summed over an example's positions, as kfac-jax's repeated-dense Kronecker block
  counts each position as a case."""
  class RepeatedDenseDiagonal(kfac_jax().curvature_blocks.DenseDiagonal):
    def update_curvature_matrix_estimate(self, state, estimation_data, ema_old, ema_new, identity_weight,
                                         batch_size):
      del identity_weight
      [x], [dy] = estimation_data.primals.inputs, estimation_data.tangents.outputs
      x, dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
      diagonals = ((x * x).T @ (dy * dy) / batch_size,)
      if self.has_bias:
        diagonals += (jnp.sum(dy * dy, axis=0) / batch_size,)
      state = state.copy()
      for factor, diagonal in zip(state.diagonal_factors, diagonals):
        factor.update(diagonal, ema_old, ema_new)
      return state
  return RepeatedDenseDiagonal


def factor_dims(parameter_shapes) -> tuple[int, int]:
  """The sizes of a layer's two Kronecker factors: kfac-jax lays every parameter out as a matrix of
  its last dimension's columns (a bias as one row) and stacks them, so a dense [in, out] layer with
  a bias has factors of in + 1 and out, a convolution's input factor is its patch size."""
  return sum(math.prod(shape[:-1]) for shape in parameter_shapes), parameter_shapes[0][-1]


@functools.cache
def layer_blocks(max_factor_dim: int, replicated: jax.sharding.Sharding | None = None) -> dict:
  """Block constructors of the Kronecker-factored layer variants (see `_float32_statistics`): a layer
  with a factor larger than `max_factor_dim` (0: no limit) gets its variant's diagonal block, whose
  state is the parameters' shape and is split like them, instead of factors replicated on every
  device (a 30k vocabulary's would be 3.7 GB, its inverse as much). With `replicated` (the mesh's
  replicated sharding) a Kronecker block inverts its factors whole (`_inverted_whole`)."""
  blocks = kfac_jax().curvature_blocks
  variants = {'dense': (blocks.DenseTwoKroneckerFactored, blocks.DenseDiagonal),
              'repeated_dense': (blocks.RepeatedDenseKroneckerFactored, _repeated_dense_diagonal()),
              'conv2d': (blocks.Conv2DTwoKroneckerFactored, blocks.Conv2DDiagonal)}

  def constructor(kronecker, diagonal):
    def build(layer_tag_eqn):
      block = kronecker(layer_tag_eqn)
      too_big = max_factor_dim and max(factor_dims(block.parameters_shapes)) > max_factor_dim
      return diagonal(layer_tag_eqn) if too_big else block
    return build

  def kronecker_block(block_class):
    block_class = _float32_statistics(block_class)
    return block_class if replicated is None else _inverted_whole(block_class, replicated)

  return {variant: constructor(kronecker_block(kronecker), _float32_statistics(diagonal))
          for variant, (kronecker, diagonal) in variants.items()}


@functools.cache
def _preconditioner_class():
  """kfac-jax's OptaxPreconditioner, with the damping read from our optimizer state.

  kfac-jax's class takes a fixed damping or a schedule of its step count; adaptive
  damping is state. `scale_by_kfac` sets `damping_in_use` (a traced value) for the
  duration of one update, and every damped operation inside it reads it. Under muP
  each block's damping is that times its `block_damping_scales` entry (kfac-jax takes
  one identity weight per block).
  """
  class Preconditioner(kfac_jax().OptaxPreconditioner):
    damping_in_use = None
    block_damping_scales = None  # per curvature block (muP); None: the same damping for all
    curvature_period = 1  # kfac-jax is given 1 (the only period it accepts); this one is applied

    def should_update_estimator_curvature(self, state):
      return True if self.curvature_period == 1 else state.count % self.curvature_period == 0

    def get_identity_weight(self, state):
      damping = super().get_identity_weight(state) if self.damping_in_use is None else self.damping_in_use
      if self.block_damping_scales is None:
        return damping
      return tuple(damping * scale for scale in self.block_damping_scales)

  return Preconditioner


def preconditioner(cfg, loss: LossContext, mesh: jax.sharding.Mesh | None = None):
  """The kfac-jax OptaxPreconditioner for `cfg`, on `mesh` when the step runs on one; fails (naming
  the task) without a loss tag."""
  replicated = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  precon = _preconditioner_class()(
      value_func=inline_remat(loss.value_fn), damping=cfg['damping'], curvature_ema=cfg['curvature_ema'],
      curvature_update_period=1,
      inverse_update_period=cfg['inverse_update_period'], estimation_mode=cfg['estimation_mode'],
      norm_constraint=cfg['norm_constraint'] or None,
      # jit + sharding already spreads the work; there is no pmap axis to distribute over.
      distributed_inverses=False, distributed_precon_apply=False,
      auto_register_kwargs={'graph_patterns': graph_patterns()},
      layer_tag_to_block_ctor=layer_blocks(int(cfg['max_factor_dim']), replicated))
  precon.curvature_period = cfg['curvature_update_period']
  try:
    jax.eval_shape(lambda args: precon.init(func_args=args, rng=jax.random.PRNGKey(0)),
                   loss.example_args)
  except ValueError as e:
    if 'no registered losses' in str(e).lower():
      raise ConfigError(f'task {loss.task_name!r} does not register its loss with kfac-jax '
                        f'(use the helpers in tasks/losses.py), so K-FAC has no curvature') from None
    raise
  return precon


def log_blocks(precon, params) -> None:
  """At start: block types by count, and (as a warning) parameters left without any structure.

  Layer-norm style scale-and-shift blocks are kfac-jax's intended treatment; a generic
  diagonal (e.g. an embedding gather) or no block at all is worth a warning. The
  per-parameter listing is logged at INFO.
  """
  blocks = describe_blocks(precon, params)
  counts = collections.Counter(kind for _, kind in blocks)
  unstructured = [f'{path} ({kind})' for path, kind in blocks
                  if kind == 'NaiveDiagonal' or kind.startswith('none')]
  logging.log(logging.WARNING if unstructured else logging.INFO,
              'K-FAC blocks: %s; generic diagonal or no block: %s',
              ', '.join(f'{n} {kind}' for kind, n in sorted(counts.items())),
              ', '.join(unstructured) or 'none')
  logging.info('K-FAC block of each parameter: %s', ', '.join(f'{path}: {kind}' for path, kind in blocks))


def describe_blocks(precon, params) -> list[tuple[str, str]]:
  """(parameter path, curvature block type) for every parameter, after init."""
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  described = {}
  for indices, block in precon.estimator.indices_to_block_map.items():
    for index in indices:
      described[paths[index]] = type(block).__name__
  return [(path, described.get(path, 'none (not used by the loss)')) for path in paths]


def block_scales(precon, params, damping_multipliers) -> tuple[float, ...]:
  """Per curvature block, the damping multiplier of its highest-rank parameter (a dense block's kernel)."""
  multipliers, ranks = jax.tree.leaves(damping_multipliers), [len(p.shape) for p in jax.tree.leaves(params)]
  block_indices = {id(block): indices for indices, block in precon.estimator.indices_to_block_map.items()}
  return tuple(multipliers[max(block_indices[id(block)], key=ranks.__getitem__)]
               for block in precon.estimator.blocks)


def curvature_subset(size: int, example_batch) -> Callable[[tuple], tuple]:
  """loss_args -> the same with `size` evenly strided examples of the batch (all when 0), so the
  subset spreads over the devices that hold the batch's rows. ConfigError unless it divides it."""
  rows = jax.tree.leaves(example_batch)[0].shape[0]
  if not size or size == rows:
    return lambda loss_args: loss_args
  if rows % size:
    raise ConfigError(f'optimizer.curvature_batch_size={size} must divide the batch ({rows} examples)')
  stride = rows // size
  return lambda loss_args: (*loss_args[:3], jax.tree.map(lambda x: x[::stride], loss_args[3]))


def scale_by_kfac(cfg, loss: LossContext, learning_rate: optax.Schedule, damping_multipliers=None,
                  mesh: jax.sharding.Mesh | None = None) -> optax.GradientTransformationExtraArgs:
  """K-FAC's preconditioned (momentum) direction; the trainer chains the learning rate.

  `learning_rate` is the chain's schedule: adaptive damping judges the step actually
  taken, -learning_rate(count) x direction. `damping_multipliers` (muP's, a tree like
  the parameters) scale the damping of each parameter's block. `mesh`: the one the step runs on.
  """
  _validate(cfg)
  precon = preconditioner(cfg, loss, mesh)
  log_blocks(precon, loss.example_args[0])
  if damping_multipliers is not None:
    precon.block_damping_scales = block_scales(precon, loss.example_args[0], damping_multipliers)
  momentum = optax.trace(decay=cfg['momentum'], nesterov=cfg['nesterov']) if cfg['momentum'] > 0 \
      else optax.identity()
  interval = cfg['damping_adaptation_interval']
  factor = cfg['damping_adaptation_decay'] ** interval
  curvature_args = curvature_subset(cfg['curvature_batch_size'], loss.example_args[3])

  def init_fn(params):
    # Only shapes matter to the factors' initial state: trace with zeros of the example's.
    _, model_state, rng, batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), loss.example_args)
    kfac_state = KfacState(precon.init(func_args=(params, model_state, rng, batch), rng=rng),
                           damping=jnp.asarray(cfg['damping'], jnp.float32), rho=jnp.asarray(jnp.nan, jnp.float32))
    return kfac_state, momentum.init(params)

  def adapted(damping, estimator_state, grads, directions, loss_args, count):
    """The Levenberg-Marquardt step: the new damping and rho for the step -lr x directions."""
    params = loss_args[0]
    delta = jax.tree.map(lambda d: -learning_rate(count) * d.astype(jnp.float32), directions)
    curvature_delta = precon.estimator.multiply(
        state=estimator_state, parameter_structured_vector=delta, identity_weight=0.0, exact_power=True,
        use_cached=False, pmap_axis_name=precon.pmap_axis_name)
    inner = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    quadratic_change = inner(grads, delta) + 0.5 * inner(curvature_delta, delta)
    new_params = jax.tree.map(lambda p, d: p + d.astype(p.dtype), params, delta)
    rho = (loss.value_fn(new_params, *loss_args[1:]) - loss.value_fn(*loss_args)) / quadratic_change
    judged = jnp.nan_to_num(rho, nan=-100.0)  # a NaN loss counts as a bad step, as in kfac-jax
    damping = jnp.select([judged > RHO_HIGH, judged < RHO_LOW], [damping * factor, damping / factor], damping)
    return jnp.maximum(damping, cfg['min_damping']), rho.astype(jnp.float32)

  def update_fn(updates, state, params=None, *, loss_args, **extra_args):
    del params, extra_args
    kfac_state, momentum_state = state
    rng = loss_args[2]
    precon.damping_in_use = kfac_state.damping
    try:
      refreshed = precon.maybe_update(kfac_state.preconditioner, curvature_args(loss_args), rng)
      preconditioned = precon.apply(updates, refreshed)
    finally:
      precon.damping_in_use = None
    directions, momentum_state = momentum.update(preconditioned, momentum_state)
    damping, rho = kfac_state.damping, kfac_state.rho
    if cfg['adaptive_damping']:
      damping, rho = jax.lax.cond(
          (refreshed.count + 1) % interval == 0,
          lambda: adapted(damping, refreshed.estimator_state, updates, directions, loss_args, refreshed.count),
          lambda: (damping, rho))
    new_state = KfacState(precon.increment_count(refreshed), damping=damping, rho=rho)
    return directions, (new_state, momentum_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def metrics(opt_state) -> dict[str, jax.Array]:
  """The damping in use and the latest reduction ratio, from any state containing a KfacState."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, KfacState))
           if isinstance(x, KfacState)]
  return {'kfac_damping': found[0].damping, 'kfac_rho': found[0].rho} if found else {}
