"""Muon: momentum orthogonalized by Newton-Schulz for the hidden matrices, Adam for the rest.

As Muon's users run it (Keller Jordan's Muon README and write-up, kellerjordan.github.io/posts/muon):
Muon takes the hidden weights, and Adam the parameters of rank < 2 (biases, norm scales) and the
matrices whose '/'-joined path contains one of `adam_paths` (embeddings, output heads, a ConvNet's
first conv). A kernel of rank > 2 ([h, w, in, out]) is orthogonalized as the matrix
[h * w * in, out], and every Muon update is scaled by sqrt(max(1, out / in)), the README's.

The README gives each group its own learning rate (Muon 0.02, AdamW 3e-4) and weight decay at that
rate, so Adam's leaves step with learning_rate x adam_learning_rate_ratio and Muon applies the
decoupled decay itself, inside each group.
"""

import math
from typing import Callable

import jax
import ml_collections
import optax
from optax import contrib

from errors import ConfigError, check_range
from optimizers import first_order

# The hyperparameters the direction reads; their defaults: configs/optimizer_defaults.py.
FIELDS = ('momentum', 'nesterov', 'ns_coeffs', 'ns_steps', 'adam_paths', 'adam_learning_rate_ratio',
          *first_order.ADAM_FIELDS)


def takes_muon(adam_paths: tuple[str, ...]) -> Callable:
  """params -> a tree of bools: whether each leaf takes Muon's direction (else Adam's)."""
  def is_hidden_matrix(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    return leaf.ndim >= 2 and not any(part in name for part in adam_paths)
  return lambda params: jax.tree_util.tree_map_with_path(is_hidden_matrix, params)


def _as_matrix(updates):
  """Every leaf orthogonalized as [product of the leading dimensions, last dimension]."""
  return jax.tree.map(lambda u: contrib.MuonDimensionNumbers(reduction_axis=tuple(range(u.ndim - 1)),
                                                             output_axis=u.ndim - 1), updates)


def _scale_by_shape(updates, params=None):
  """x sqrt(max(1, fan_out / fan_in)): the same spectral step for tall and wide matrices."""
  del params
  return jax.tree.map(lambda u: u * math.sqrt(max(1.0, u.shape[-1] / math.prod(u.shape[:-1]))), updates)


def _check(cfg: ml_collections.ConfigDict) -> None:
  check_range(cfg, 'momentum', 0.0, 1.0)
  check_range(cfg, 'ns_steps', 1, None)
  check_range(cfg, 'adam_learning_rate_ratio', 0.0, None)
  coeffs = tuple(cfg.ns_coeffs)
  if len(coeffs) != 3 or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in coeffs):
    raise ConfigError(f'optimizer.ns_coeffs={coeffs} must be 3 finite numbers (a, b, c)')
  if isinstance(cfg.adam_paths, str) or not all(isinstance(part, str) and part for part in cfg.adam_paths):
    raise ConfigError(f'optimizer.adam_paths={cfg.adam_paths!r} must be a tuple of non-empty path substrings')


def direction(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  _check(cfg)
  decay = cfg.weight_decay if cfg.weight_decay_mode == 'decoupled' else 0.0
  decayed = [optax.add_decayed_weights(decay, mask=first_order.decay_mask(cfg.decay_rank1))] if decay else []
  muon = optax.chain(
      contrib.scale_by_muon(ns_coeffs=tuple(cfg.ns_coeffs), ns_steps=cfg.ns_steps, beta=cfg.momentum,
                            nesterov=cfg.nesterov, weight_dimension_numbers=_as_matrix),
      optax.stateless(_scale_by_shape), *decayed)
  adam = optax.chain(first_order.adam(cfg), *decayed, optax.scale(cfg.adam_learning_rate_ratio))
  muon_leaves = takes_muon(tuple(cfg.adam_paths))
  return optax.partition(
      {'muon': muon, 'adam': adam},
      lambda params: jax.tree.map(lambda is_muon: 'muon' if is_muon else 'adam', muon_leaves(params)))
