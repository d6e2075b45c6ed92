"""Optimizer registry: name -> (default hyperparameters, direction builder).

Every optimizer is the same optax chain, so that clipping, weight decay and the
learning-rate schedule mean the same thing for all of them:

    clip by global norm -> [coupled weight decay] -> direction -> [decoupled weight decay] -> x -lr(step)

Shampoo can also take the decay inside its direction, added before its momentum as the reference
implementation does (weight_decay_mode='before_momentum'). Every mode leaves rank-1 parameters
alone unless decay_rank1.

An optimizer contributes only its *direction* (momentum, Adam's moments,
Adagrad's accumulator, Shampoo's preconditioner, K-FAC's curvature...), a
GradientTransformation built from its config block. One that needs the task's
loss (K-FAC) declares it and gets a `kfac.LossContext` and the learning-rate
schedule; its update then reads the extra argument `loss_args` that the trainer
passes to every update.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from errors import ConfigError, check_range
from optimizers import embeddings  # noqa: F401  (re-exported: sparse row updates of embedding tables)
from optimizers import first_order
from optimizers import kfac
from optimizers import muon
from optimizers import parameterization
from optimizers import schedules  # noqa: F401  (re-exported: optimizers.schedules.build)
from optimizers import shampoo
from optimizers import soap

# The fields every optimizer block has besides its own (defaults: configs/optimizer_defaults.py).
COMMON_FIELDS = ('learning_rate', 'weight_decay', 'weight_decay_mode', 'decay_rank1', 'grad_clip_norm')
WEIGHT_DECAY_MODES = ('decoupled', 'coupled', 'before_momentum')


class Optimizer(NamedTuple):
  fields: tuple[str, ...]  # the hyperparameters `direction` reads from the block
  direction: Callable[[ml_collections.ConfigDict], optax.GradientTransformation]
  # Optimizer-state details (e.g. Shampoo's root errors), logged when config.log_optimizer_metrics.
  metrics: Callable[[optax.OptState], dict] = lambda state: {}
  # Optimizer-state health that every run logs (e.g. Shampoo's failed roots).
  health: Callable[[optax.OptState], dict] = lambda state: {}
  # Whether `direction` takes (cfg, kfac.LossContext, schedule, damping multipliers or None): curvature
  # from the task's loss.
  needs_loss: bool = False
  # Whether `direction` applies decoupled weight decay itself (LAMB, LARS: inside the trust ratio;
  # Muon: at each parameter group's own rate).
  owns_weight_decay: bool = False
  # Whether the optimizer is defined by its decoupled weight decay (AdamW, NAdamW), so that the
  # other modes, which would make it a different method, are refused.
  decoupled_only: bool = False
  # Whether `direction` adds the weight decay to its direction before its momentum when
  # weight_decay_mode='before_momentum' (Shampoo); no other optimizer takes that mode.
  decays_before_momentum: bool = False
  # Whether `direction` takes (cfg, stack_sharding): Shampoo shards its stacks of blocks and
  # statistics over the devices, padded to a multiple of their count.
  pads_stacks: bool = False


REGISTRY: dict[str, Optimizer] = {
    'sgd': Optimizer(first_order.SGD_FIELDS, first_order.sgd),
    'adam': Optimizer(first_order.ADAM_FIELDS, first_order.adam),
    'adamw': Optimizer(first_order.ADAM_FIELDS, first_order.adam, decoupled_only=True),
    'nadamw': Optimizer(first_order.ADAM_FIELDS, first_order.nadam, decoupled_only=True),
    'muon': Optimizer(muon.FIELDS, muon.direction, owns_weight_decay=True),
    'adagrad': Optimizer(first_order.ADAGRAD_FIELDS, first_order.adagrad),
    'lamb': Optimizer(first_order.LAMB_FIELDS, first_order.lamb, owns_weight_decay=True),
    'lars': Optimizer(first_order.LARS_FIELDS, first_order.lars, owns_weight_decay=True),
    'shampoo': Optimizer(shampoo.FIELDS,
                         lambda cfg, sharding: shampoo.scale_by_shampoo(
                             stack_multiple=sharding.num_devices if sharding else 1, stack_sharding=sharding,
                             weight_decay=cfg.weight_decay if cfg.weight_decay_mode == 'before_momentum' else 0.0,
                             weight_decay_mask=first_order.decay_mask(cfg.decay_rank1),
                             **{k: cfg[k] for k in shampoo.FIELDS}),
                         shampoo.metrics, shampoo.health, pads_stacks=True, decays_before_momentum=True),
    'kfac': Optimizer(kfac.FIELDS, kfac.scale_by_kfac, kfac.metrics, needs_loss=True),
    'soap': Optimizer(soap.FIELDS,
                      lambda cfg, sharding: soap.scale_by_soap(
                          stack_multiple=sharding.num_devices if sharding else 1, stack_sharding=sharding,
                          **{k: cfg[k] for k in soap.FIELDS}),
                      pads_stacks=True),
}


def _lookup(name: str) -> Optimizer:
  if name not in REGISTRY:
    raise ConfigError(f'unknown optimizer {name!r}; known: {", ".join(sorted(REGISTRY))}')
  return REGISTRY[name]


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Rejects an optimizer block that is not exactly its builder's fields, or holds a bad common value."""
  optimizer = _lookup(cfg.name)
  expected = {'name', *COMMON_FIELDS, *optimizer.fields}
  missing, unknown = expected - set(cfg), set(cfg) - expected
  if unknown:
    raise ConfigError(f'unknown {cfg.name} optimizer fields: {", ".join(sorted(unknown))}')
  if missing:
    raise ConfigError(f'the {cfg.name} optimizer block lacks {", ".join(sorted(missing))} '
                      f'(start it from configs.base.optimizer)')
  _check_common(cfg)
  if optimizer.decoupled_only and cfg.weight_decay_mode != 'decoupled':
    raise ConfigError(f'optimizer.weight_decay_mode={cfg.weight_decay_mode!r}: {cfg.name} is Adam with '
                      f"decoupled weight decay; choose 'decoupled', or adam for another mode")
  if cfg.weight_decay_mode == 'before_momentum' and not optimizer.decays_before_momentum:
    takers = ', '.join(name for name, o in sorted(REGISTRY.items()) if o.decays_before_momentum)
    raise ConfigError(f"optimizer.weight_decay_mode='before_momentum' is for {takers} only "
                      f'(its momentum is inside its direction); {cfg.name}: choose coupled or decoupled')


def _check_common(cfg: ml_collections.ConfigDict) -> None:
  check_range(cfg, 'learning_rate', 0.0, None)
  check_range(cfg, 'weight_decay', 0.0, None)
  check_range(cfg, 'grad_clip_norm', 0.0, None)
  if cfg.weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ConfigError(f'optimizer.weight_decay_mode={cfg.weight_decay_mode!r}: '
                      f'choose one of {", ".join(WEIGHT_DECAY_MODES)}')


def needs_loss(name: str) -> bool:
  """Whether the optimizer estimates curvature from the loss (and so needs loss_args)."""
  return _lookup(name).needs_loss


def state_metrics(name: str, detailed: bool):
  """optimizer state -> metrics: its health, and its details too when `detailed`."""
  optimizer = _lookup(name)
  if not detailed:
    return optimizer.health
  return lambda state: {**optimizer.health(state), **optimizer.metrics(state)}


def async_roots(cfg: ml_collections.ConfigDict, params, opt_state_shardings,
                stack_sharding: jax.sharding.Sharding | None) -> shampoo.AsyncRoots | None:
  """The host's side of Shampoo's asynchronous root refresh (the loop calls it around each
  update), or None: another optimizer, or roots refreshed inside the step."""
  if cfg.name != 'shampoo' or cfg.root_refresh not in shampoo.ASYNC_REFRESHES:
    return None
  return shampoo.AsyncRoots(params, opt_state_shardings, stack_sharding.num_devices if stack_sharding else 1,
                            {k: cfg[k] for k in shampoo.FIELDS})


def build(cfg: ml_collections.ConfigDict, schedule: optax.Schedule,
          loss: kfac.LossContext | None = None,
          multipliers: parameterization.Multipliers | None = None,
          stack_sharding: jax.sharding.Sharding | None = None) -> optax.GradientTransformationExtraArgs:
  """The full update rule for `cfg` (config.optimizer); fails early on bad values.

  `multipliers` (muP's, from optimizers.parameterization) scale each parameter's step
  after the learning rate, and K-FAC's damping per block. `stack_sharding` (the trainer's: every
  mesh axis on a stack's first dimension) is how Shampoo splits its stacks of blocks and
  statistics over the devices, each padded to a multiple of their count; K-FAC takes its mesh;
  the other optimizers ignore it.
  """
  validate(cfg)
  optimizer = _lookup(cfg.name)
  if optimizer.needs_loss:
    if loss is None:
      raise ConfigError(f'optimizer {cfg.name!r} needs the task loss to build')
    direction = optimizer.direction(cfg, loss, schedule, None if multipliers is None else multipliers.damping,
                                    mesh=None if stack_sharding is None else stack_sharding.mesh)
  elif optimizer.pads_stacks:
    direction = optimizer.direction(cfg, stack_sharding)
  else:
    direction = optimizer.direction(cfg)
  decay = optax.add_decayed_weights(cfg.weight_decay, mask=first_order.decay_mask(cfg.decay_rank1))
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.weight_decay > 0 and cfg.weight_decay_mode == 'coupled':
    parts.append(decay)
  parts.append(direction)
  if cfg.weight_decay > 0 and cfg.weight_decay_mode == 'decoupled' and not optimizer.owns_weight_decay:
    parts.append(decay)
  parts.append(optax.scale_by_learning_rate(schedule))
  if multipliers is not None and not parameterization.is_identity(multipliers.lr):
    if optimizer.needs_loss:  # its adaptive damping judges the step -lr x direction
      raise ConfigError(f'optimizer {cfg.name!r} cannot take per-parameter learning-rate multipliers')
    parts.append(optax.stateless(lambda updates, params: jax.tree.map(jnp.multiply, updates, multipliers.lr)))
  return optax.chain(*parts)
