"""Shampoo's statistics and preconditioned directions, one batched op per bucket.

A block with k preconditioned dimensions has k statistics
L_i <- beta2 L_i + (1-beta2) G_(i) G_(i)^T (beta2 = 1: plain sums), and its direction
is G x_1 L_1^{-1/2k} ... x_k L_k^{-1/2k}. A root with error >= `inverse_failure_threshold`,
or not finite, keeps the previous one. Every product is full float32 (`roots.HIGHEST`).
"""

import jax.numpy as jnp

from optimizers.shampoo import blocking
from optimizers.shampoo import roots as roots_lib


def ema(old, new, beta2: float):
  """beta2 old + (1 - beta2) new; beta2 = 1 sums instead (Adagrad-style)."""
  return old + new if beta2 == 1.0 else beta2 * old + (1 - beta2) * new


def block_statistics(blocks, kept):
  """G_(i) G_(i)^T for every kept mode i of a [n, b_1..b_k] stack of blocks.

  One contraction over all other modes per i, with no explicit unfolding: a transposed
  copy of every block would cost ~20% of the statistics time on CPU.
  """
  modes = 'abcdefghijklm'[:blocks.ndim - 1]
  return [jnp.einsum(f'n{modes},n{modes.replace(m, "z")}->n{m}z', blocks, blocks, precision=roots_lib.HIGHEST)
          for m, keep in zip(modes, kept) if keep]


def update_statistics(stats, stacks, p: blocking.Plan, beta2: float, dtype):
  """Every statistics stack with this step's statistics of its group's blocks folded in.

  Row i of a statistics stack belongs to row i of its group's stack of blocks, so with both
  sharded alike this is local to each device. The identity matrices that pad a stack stay
  identities: an average with zeros would decay them to a zero matrix, which has no root.
  """
  out = {}
  for group, blocks in stacks.items():
    kept = p.kept(group)
    keys = [blocking.statistic_key(group, mode) for mode, keep in enumerate(kept) if keep]
    for key, new in zip(keys, block_statistics(blocks, kept)):
      old = stats[key]
      updated = ema(old.astype(jnp.float32), new, beta2).astype(dtype)
      padding = p.sizes[key].padding
      out[key] = jnp.where(padding[:, None, None], old, updated) if padding.any() else updated
  return out


def refresh_roots(stats, roots, bases, masks, hp: dict, dtype):
  """Fresh inverse roots of every bucket, the previous root where one failed.

  `bases` (statistic key -> [n, b, b]) are the eigenbases kept between refreshes by
  root_method='warm_eigh', None otherwise. Returns the roots, each matrix's root error, per
  bucket which matrices got a fresh root, and the bases for the next refresh (or None).
  """
  out_roots, out_errors, succeeded, out_bases = {}, {}, {}, {} if bases is not None else None
  for key in stats:
    settings = dict(p=blocking.bucket_exponent(key), epsilon=hp['matrix_epsilon'],
                    relative_epsilon=hp['relative_matrix_epsilon'],
                    padding=jnp.asarray(masks[key]) if masks[key].any() else None)
    if bases is not None:
      computed, error, out_bases[key] = roots_lib.warm_inverse_pth_root(
          stats[key], bases[key], tolerance=hp['warm_eigh_tolerance'], **settings)
    else:
      computed, error = roots_lib.inverse_pth_root(
          stats[key], method=hp['root_method'], iterations=hp['newton_iterations'],
          tolerance=hp['newton_tolerance'], **settings)
    ok = (error < hp['inverse_failure_threshold']) & jnp.all(jnp.isfinite(computed), axis=(-2, -1))
    out_roots[key] = jnp.where(ok[:, None, None], computed.astype(dtype), roots[key])
    out_errors[key] = error
    succeeded[key] = ok
  return out_roots, out_errors, succeeded, out_bases


def apply_roots(blocks, roots):
  """blocks x_1 roots[0] ... x_k roots[k-1] (None: that mode is left as is).

  Contracting mode 1 each time (or moving it last) cycles the modes back into order.
  """
  for root in roots:
    blocks = (jnp.moveaxis(blocks, 1, -1) if root is None
              else jnp.einsum('nj...,naj->n...a', blocks, root, precision=roots_lib.HIGHEST))
  return blocks


def precondition(blocks, group: str, kept: tuple[bool, ...], roots):
  """A group's stack of blocks times the roots of its statistics, mode by mode."""
  return apply_roots(blocks, [roots[blocking.statistic_key(group, mode)].astype(jnp.float32) if keep else None
                              for mode, keep in enumerate(kept)])
