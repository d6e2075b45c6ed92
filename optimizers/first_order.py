"""First-order directions: SGD (momentum, Nesterov), Adam, NAdam, Adagrad, LAMB, LARS."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from errors import check_range

# The hyperparameters each direction reads; their defaults: configs/optimizer_defaults.py.
SGD_FIELDS = ('momentum', 'nesterov')
ADAM_FIELDS = ('b1', 'b2', 'eps')
ADAGRAD_FIELDS = ('initial_accumulator_value', 'eps')
LAMB_FIELDS = ADAM_FIELDS
LARS_FIELDS = ('momentum', 'nesterov', 'trust_coefficient', 'eps')


def decay_mask(decay_rank1: bool):
  """Which parameters weight decay applies to: matrices and up, and rank-1 ones if asked."""
  return lambda params: jax.tree.map(lambda p: decay_rank1 or p.ndim > 1, params)


def sgd(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  check_range(cfg, 'momentum', 0.0, 1.0)
  if cfg.momentum == 0:
    return optax.identity()
  return optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov)


def _check_moments(cfg: ml_collections.ConfigDict) -> None:
  check_range(cfg, 'b1', 0.0, 1.0)
  check_range(cfg, 'b2', 0.0, 1.0)
  check_range(cfg, 'eps', 0.0, None)


def adam(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  _check_moments(cfg)
  return optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def nadam(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  _check_moments(cfg)
  return scale_by_nadam(cfg.b1, cfg.b2, cfg.eps)


def scale_by_nadam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """NAdam as AlgoPerf's NAdamW baseline runs it (Dahl et al. 2023; Choi et al. 2019, Table 1):
  Adam with the Nesterov step (b1 m_t + (1 - b1) g_t) / (1 - b1^t) in place of m_t / (1 - b1^t).
  optax.scale_by_adam(nesterov=True) corrects the b1 m_t term by 1 - b1^(t+1) instead, which changes
  the first steps (1.47 against 1.9 x sign(g) at step 1), so this is written out. Its state is
  Adam's."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
    nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)
    count = state.count + 1
    correction1, correction2 = 1 - b1 ** count, 1 - b2 ** count
    direction = jax.tree.map(
        lambda g, m, v: (b1 * m + (1 - b1) * g) / correction1 / (jnp.sqrt(v / correction2) + eps),
        updates, mu, nu)
    return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def adagrad(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  check_range(cfg, 'initial_accumulator_value', 0.0, None)
  check_range(cfg, 'eps', 0.0, None)
  return optax.scale_by_rss(initial_accumulator_value=cfg.initial_accumulator_value, eps=cfg.eps)


def lamb(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam's direction plus decoupled weight decay, rescaled per parameter by the trust ratio
  ||w|| / ||direction||: the decay sits inside the ratio, so LAMB applies it itself."""
  adam_direction = adam(cfg)
  decay = cfg.weight_decay if cfg.weight_decay_mode == 'decoupled' else 0.0
  return optax.chain(adam_direction, optax.add_decayed_weights(decay, mask=decay_mask(cfg.decay_rank1)),
                     optax.scale_by_trust_ratio())


def lars(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """optax.lars' direction: (gradient + decay) rescaled per parameter by trust_coefficient * ||w|| /
  ||gradient + decay||, then momentum. Rank-1 parameters (batch norm, biases) keep neither decay nor
  trust ratio unless decay_rank1, as MLPerf's reference. optax.lars scales by the learning rate
  before the momentum, this chain after it (as every optimizer here): the same at a constant rate."""
  check_range(cfg, 'momentum', 0.0, 1.0)
  check_range(cfg, 'trust_coefficient', 0.0, None)
  check_range(cfg, 'eps', 0.0, None)
  decay = cfg.weight_decay if cfg.weight_decay_mode == 'decoupled' else 0.0
  mask = decay_mask(cfg.decay_rank1)
  return optax.chain(optax.add_decayed_weights(decay, mask=mask),
                     optax.masked(optax.scale_by_trust_ratio(trust_coefficient=cfg.trust_coefficient, eps=cfg.eps),
                                  mask),
                     optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
