"""K-FAC (Martens & Grosse 2015) through kfac-jax, as one optax transformation.

kfac-jax's own `Optimizer` compiles its own step; its `OptaxPreconditioner`
exposes the same curvature machinery to optax. This adapter wraps the
preconditioner so that K-FAC runs inside the trainer's single jitted, sharded
step: each update first refreshes the Kronecker factors from the registered loss
(every `curvature_update_period` steps) and their inverses (every
`inverse_update_period`), then preconditions the gradient, then applies momentum.
The curvature pass needs the loss function and the batch, which the trainer
passes as the optax extra argument `loss_args = (params, model_state, rng, batch)`.

Layers are found by kfac-jax's graph matcher (dense, conv, scale-and-shift);
parameters it cannot match get diagonal blocks. `describe_blocks` says which.

Not available in this path: kfac-jax's adaptive (Levenberg-Marquardt) damping
and its learning-rate/momentum adaptation, which need its own `Optimizer.step`;
damping here is fixed; `norm_constraint` (KL clipping) is the stabiliser this path offers.
"""

import collections
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from absl import logging

from configs import ConfigError
from optimizers.first_order import check_range

DEFAULTS = dict(
    damping=1e-3,                      # Tikhonov damping added to the curvature (factored, pi-adjusted)
    curvature_ema=0.95,                # EMA of the Kronecker factors
    curvature_update_period=1,         # steps between factor updates
    inverse_update_period=5,           # steps between inverse refreshes (the expensive part)
    estimation_mode='fisher_gradients',  # fisher_gradients | fisher_empirical | fisher_exact | ggn_curvature_prop | ...
    momentum=0.9,                      # heavy-ball momentum on the preconditioned gradient; 0 disables
    nesterov=False,
    norm_constraint=0.0,               # cap the update's squared Fisher norm v'Fv (KL clipping); 0 = off
)
ESTIMATION_MODES = ('fisher_gradients', 'fisher_curvature_prop', 'fisher_exact', 'fisher_empirical',
                    'ggn_curvature_prop', 'ggn_exact')


def _compatible_eval_jaxpr_eqn(eqn, in_values):
  """kfac-jax 0.0.8 expects Primitive.get_bind_params to return (subfuns, params);
  current JAX returns the params alone (subfuns inside them). Accept both."""
  import jax.extend as jex
  bind = eqn.primitive.get_bind_params(eqn.params)
  subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
  with jex.source_info_util.user_context(eqn.source_info.traceback):
    output = eqn.primitive.bind(*subfuns, *in_values, **params)
  return output if isinstance(output, list) else [output]


@functools.cache
def kfac_jax():
  """The kfac_jax module, with the JAX-compatibility shim installed once."""
  import kfac_jax as module
  from kfac_jax._src import tag_graph_matcher
  tag_graph_matcher.eval_jaxpr_eqn = _compatible_eval_jaxpr_eqn
  return module


def loaded():
  """kfac_jax if K-FAC has loaded it in this process, else None (its import is slow)."""
  return kfac_jax() if kfac_jax.cache_info().currsize else None


class LossContext(NamedTuple):
  """What K-FAC needs from the task: its loss and example arguments to trace it with."""
  value_fn: Callable[..., jax.Array]  # (params, model_state, rng, batch) -> scalar loss
  example_args: tuple                 # (params, model_state, rng, batch), arrays or shapes
  task_name: str


class KfacState(NamedTuple):
  preconditioner: Any  # kfac_jax OptaxPreconditionState


def _validate(cfg) -> None:
  check_range(cfg, 'damping', 0.0, None)
  check_range(cfg, 'curvature_ema', 0.0, 1.0)
  check_range(cfg, 'curvature_update_period', 1, None)
  check_range(cfg, 'inverse_update_period', 1, None)
  check_range(cfg, 'momentum', 0.0, 1.0)
  check_range(cfg, 'norm_constraint', 0.0, None)
  if cfg['damping'] == 0:
    raise ConfigError('optimizer.damping=0: K-FAC needs positive damping to invert its factors')
  if cfg['estimation_mode'] not in ESTIMATION_MODES:
    raise ConfigError(f'optimizer.estimation_mode={cfg["estimation_mode"]!r}: '
                      f'choose one of {", ".join(ESTIMATION_MODES)}')


def preconditioner(cfg, loss: LossContext):
  """The kfac-jax OptaxPreconditioner for `cfg`; fails (naming the task) without a loss tag."""
  module = kfac_jax()
  precon = module.OptaxPreconditioner(
      value_func=loss.value_fn, damping=cfg['damping'], curvature_ema=cfg['curvature_ema'],
      curvature_update_period=cfg['curvature_update_period'],
      inverse_update_period=cfg['inverse_update_period'], estimation_mode=cfg['estimation_mode'],
      norm_constraint=cfg['norm_constraint'] or None,
      # jit + sharding already spreads the work; there is no pmap axis to distribute over.
      distributed_inverses=False, distributed_precon_apply=False)
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


def scale_by_kfac(cfg, loss: LossContext) -> optax.GradientTransformationExtraArgs:
  """K-FAC's preconditioned (momentum) direction; the trainer chains the learning rate."""
  _validate(cfg)
  precon = preconditioner(cfg, loss)
  log_blocks(precon, loss.example_args[0])
  momentum = optax.trace(decay=cfg['momentum'], nesterov=cfg['nesterov']) if cfg['momentum'] > 0 \
      else optax.identity()

  def init_fn(params):
    # Only shapes matter to the factors' initial state: trace with zeros of the example's.
    _, model_state, rng, batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), loss.example_args)
    return KfacState(precon.init(func_args=(params, model_state, rng, batch), rng=rng)), \
        momentum.init(params)

  def update_fn(updates, state, params=None, *, loss_args, **extra_args):
    del params, extra_args
    kfac_state, momentum_state = state
    rng = loss_args[2]
    refreshed = precon.maybe_update(kfac_state.preconditioner, loss_args, rng)
    preconditioned = precon.apply(updates, refreshed)
    directions, momentum_state = momentum.update(preconditioned, momentum_state)
    return directions, (KfacState(precon.increment_count(refreshed)), momentum_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
