"""Curvature diagnostics along the trajectory, from Hessian-vector products only.

Every `diagnostics.every` steps, on one fixed batch (the first of the train stream),
the trainer logs (split "diagnostics" in metrics.jsonl):

    top_eigenvalue      the loss Hessian's eigenvalue of largest magnitude (power iteration)
    hessian_trace       sum of the Hessian diagonal, by Hutchinson's estimator E[z * Hz]
    r_med               max / median of that diagonal over all parameters: Jiang, Malik & Li
                        (NeurIPS 2022), a condition-number-like statistic that adaptive
                        optimizers keep small along their trajectories; over the non-zero
                        entries (see r_med), whose share hessian_zero_fraction reports
    r_med/<parameter>   the same per parameter (layer); only for those with more than one entry
    shampoo_*           with Shampoo: log10 condition numbers of its statistics (as the root
                        sees them, damped by matrix_epsilon), overall and per stack of blocks,
                        and its root errors / failed roots

A Hessian-vector product is forward-over-reverse differentiation of the task loss, so no
dense Hessian is ever formed; its cost is a few gradients. Settings: `config.diagnostics`
(configs/base.py). Off by default (`every=0`): then nothing here is built or compiled.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from errors import ConfigError
from optimizers import shampoo

def check(cfg: ml_collections.ConfigDict) -> None:
  if cfg.every < 0:
    raise ConfigError(f'diagnostics.every={cfg.every} must be >= 0 (0 = off)')
  for field in ('power_iterations', 'hutchinson_samples'):
    if cfg[field] < 1:
      raise ConfigError(f'diagnostics.{field}={cfg[field]} must be >= 1')


def hvp(loss_fn, params, vector):
  """H v at `params`: the directional derivative of the gradient along v."""
  return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def _dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def top_eigenvalue(loss_fn, params, rng, iterations: int) -> jax.Array:
  """Power iteration on H from a random start: the Rayleigh quotient of the last iterate."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  start = treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])

  def normalized(v):
    norm = jnp.sqrt(_dot(v, v))
    return jax.tree.map(lambda x: x / jnp.maximum(norm, 1e-30), v)

  def step(v, _):
    return normalized(hvp(loss_fn, params, v)), None

  v, _ = jax.lax.scan(step, normalized(start), None, length=iterations)
  return _dot(v, hvp(loss_fn, params, v))


def hessian_diagonal(loss_fn, params, rng, samples: int):
  """Hutchinson: diag(H) = E[z * Hz] over Rademacher z, averaged over `samples` probes."""
  leaves, treedef = jax.tree.flatten(params)

  def probe(total, key):
    keys = jax.random.split(key, len(leaves))
    z = treedef.unflatten([jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    return jax.tree.map(lambda t, zi, hz: t + zi * hz, total, z, hvp(loss_fn, params, z)), None

  total, _ = jax.lax.scan(probe, jax.tree.map(jnp.zeros_like, params), jax.random.split(rng, samples))
  return jax.tree.map(lambda t: t / samples, total)


def r_med(diagonal: jax.Array) -> jax.Array:
  """max / median of a Hessian diagonal (Jiang, Malik & Li 2022) over its non-zero entries.

  Entries the batch cannot move (embedding rows of absent tokens, dead ReLU units) have an
  exactly zero diagonal; counted in, they would make the median 0 and the ratio infinite.
  Their share is reported on its own (`hessian_zero_fraction`).
  """
  flat = diagonal.reshape(-1)
  live = flat != 0
  return jnp.max(jnp.where(live, flat, -jnp.inf)) / jnp.nanmedian(jnp.where(live, flat, jnp.nan))


def shampoo_conditioning(opt_state, matrix_epsilon: float) -> dict[str, jax.Array]:
  """Shampoo's preconditioner health: log10 condition numbers of its statistics, root errors.

  A statistic's number is that of S + epsilon * lambda_max(S) I, the damped matrix its
  inverse root is computed from (zero-padded coordinates of ragged blocks sit at the
  damping floor). Reported over all real matrices, not the identities padding the stacks
  (max, median), and per stack of statistics (`<block shape>_p<exponent>_m<mode>`: max
  condition, max root error), with the optimizer's own counters of failed roots and refreshes.
  """
  states = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, shampoo.ShampooState))
            if isinstance(x, shampoo.ShampooState)]
  if not states or not states[0].stats:
    return {}
  state, metrics, everything = states[0], {}, []
  for bucket, stats in state.stats.items():
    eigenvalues = jnp.linalg.eigvalsh(stats.astype(jnp.float32))
    largest = jnp.maximum(eigenvalues[:, -1], 1e-30)
    floor = matrix_epsilon * largest
    padding = state.padding[bucket]
    conds = jnp.where(padding, jnp.nan, jnp.log10((largest + floor) / (jnp.maximum(eigenvalues[:, 0], 0.0) + floor)))
    everything.append(conds)
    metrics[f'shampoo_log10_cond/{bucket}'] = jnp.nanmax(conds)
    metrics[f'shampoo_root_error/{bucket}'] = jnp.max(jnp.where(padding, 0.0, state.root_errors[bucket]))
  everything = jnp.concatenate(everything)
  return {'shampoo_log10_cond_max': jnp.nanmax(everything), 'shampoo_log10_cond_median': jnp.nanmedian(everything),
          **metrics, **shampoo.metrics(opt_state)}


def build(task, cfg: ml_collections.ConfigDict, optimizer_cfg: ml_collections.ConfigDict):
  """fn(params, model_state, opt_state, batch) -> metrics, for the trainer to compile."""
  rng = jax.random.PRNGKey(cfg.seed)
  eigen_rng, probe_rng, loss_rng = jax.random.split(rng, 3)

  def diagnose(params, model_state, opt_state, batch):
    loss_fn = lambda p: task.loss(p, model_state, batch, loss_rng)[0]  # noqa: E731
    diagonal = hessian_diagonal(loss_fn, params, probe_rng, cfg.hutchinson_samples)
    flat = jnp.concatenate([d.reshape(-1) for d in jax.tree.leaves(diagonal)])
    metrics = {'top_eigenvalue': top_eigenvalue(loss_fn, params, eigen_rng, cfg.power_iterations),
               'hessian_trace': jnp.sum(flat), 'r_med': r_med(flat),
               'hessian_zero_fraction': jnp.mean(flat == 0)}
    for path, d in jax.tree_util.tree_flatten_with_path(diagonal)[0]:
      if np.prod(d.shape) > 1:
        metrics[f'r_med/{jax.tree_util.keystr(path, simple=True, separator="/")}'] = r_med(d)
    if optimizer_cfg.name == 'shampoo':
      metrics.update(shampoo_conditioning(opt_state, optimizer_cfg.matrix_epsilon))
    return metrics

  return diagnose
