"""First-order directions from optax: SGD (momentum, Nesterov), Adam, Adagrad, LAMB, LARS."""

import jax
import ml_collections
import optax

from errors import check_range

SGD_DEFAULTS = dict(momentum=0.9, nesterov=False)
ADAM_DEFAULTS = dict(b1=0.9, b2=0.999, eps=1e-8)
ADAGRAD_DEFAULTS = dict(initial_accumulator_value=0.1, eps=1e-7)
# You et al. 2020 (LAMB), as in the MLPerf BERT reference: eps 1e-6.
LAMB_DEFAULTS = dict(b1=0.9, b2=0.999, eps=1e-6)
# You et al. 2017 (LARS), optax.lars' defaults; MLPerf's ResNet-50 reference also uses momentum 0.9.
LARS_DEFAULTS = dict(momentum=0.9, nesterov=False, trust_coefficient=0.001, eps=0.0)


def decay_mask(decay_rank1: bool):
  """Which parameters weight decay applies to: matrices and up, and rank-1 ones if asked."""
  return lambda params: jax.tree.map(lambda p: decay_rank1 or p.ndim > 1, params)


def sgd(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  check_range(cfg, 'momentum', 0.0, 1.0)
  if cfg.momentum == 0:
    return optax.identity()
  return optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov)


def adam(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  check_range(cfg, 'b1', 0.0, 1.0)
  check_range(cfg, 'b2', 0.0, 1.0)
  check_range(cfg, 'eps', 0.0, None)
  return optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


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
