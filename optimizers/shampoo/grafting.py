"""Grafting: the step size of a simple optimizer, the direction of Shampoo.

With `graft_granularity='block'` each block of the Shampoo direction is rescaled to the norm
of the graft's direction for that block (each row, along a skipped dimension: a rarely seen
embedding row keeps the graft's step size while its statistic turns the direction); with
'layer' each parameter's whole direction takes the norm of its graft direction, as the
reference implementation does. Before the preconditioning starts the graft direction is used
alone.
"""

import jax.numpy as jnp

from optimizers.shampoo import preconditioning

GRAFT_TYPES = ('none', 'sgd', 'adagrad', 'rmsprop', 'sgd_normalized', 'adagrad_normalized',
               'rmsprop_normalized')
GRANULARITIES = ('block', 'layer')


def keeps_accumulators(graft_type: str) -> bool:
  """Whether `graft_type` needs per-parameter second-moment accumulators in the state."""
  return graft_type.removesuffix('_normalized') in ('adagrad', 'rmsprop')


def directions(grads, accumulators, count, *, graft_type: str, beta2: float, epsilon: float):
  """The graft's direction for each gradient, and its updated accumulators (None if it has none).

  `_normalized` types divide each gradient by its norm first; `count` is the number of updates
  before this one (RMSprop's bias correction).
  """
  base = graft_type.removesuffix('_normalized')
  if graft_type.endswith('_normalized'):
    grads = [g / jnp.maximum(jnp.linalg.norm(g), 1e-30) for g in grads]
  if base in ('none', 'sgd'):
    return grads, accumulators
  if base == 'adagrad':
    accumulators = [a + g * g for a, g in zip(accumulators, grads)]
    second_moments = accumulators
  else:  # RMSprop, bias-corrected as in Adam: uncorrected, the first steps are 1/sqrt(1-beta2) too long
    accumulators = [preconditioning.ema(a, g * g, beta2) for a, g in zip(accumulators, grads)]
    correction = 1.0 if beta2 == 1.0 else 1 - beta2 ** (count + 1).astype(jnp.float32)
    second_moments = [a / correction for a in accumulators]
  return [g / (jnp.sqrt(v) + epsilon) for v, g in zip(second_moments, grads)], accumulators


def _norm(x, axes):
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


def block_axes(kept: tuple[bool, ...]) -> tuple[int, ...]:
  """The axes of a group's [n, *block] stack that one block norm sums over: its kept modes, so a
  skipped dimension gets a norm per row."""
  return tuple(1 + i for i, keep in enumerate(kept) if keep)


def rescale(direction, graft, axes=None):
  """`direction` scaled to the norms of `graft` over `axes` (None: one norm for the whole array);
  a zero part stays zero."""
  shampoo_norm = _norm(direction, axes)
  return direction * jnp.where(shampoo_norm > 0, _norm(graft, axes) / shampoo_norm, 0.0)
