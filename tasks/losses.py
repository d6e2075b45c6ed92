"""Losses that also declare themselves to K-FAC (kfac-jax loss tags).

Every task computes its loss through these helpers. K-FAC reads the tag to know
the model's predictive distribution, from which it estimates curvature. The tag
is an identity in evaluation and differentiation, and it is only emitted once
K-FAC has loaded kfac-jax in the process, so other optimizers do not even pay
for kfac-jax's (slow) import.
"""

import jax.numpy as jnp
import optax

from optimizers import kfac


def lp_loss(predictions, targets, p: float):
  """mean |prediction - target|^p, declared to K-FAC as squared error (a Gaussian model).

  K-FAC's curvature is then the Gauss-Newton matrix of the squared error: exact for
  p = 2, for p > 2 a proxy with the same Kronecker structure (input covariance x
  output-gradient covariance) that differs from the l_p Hessian by a per-example weight.
  """
  if module := kfac.loaded():
    module.register_squared_error_loss(predictions[:, None], targets[:, None])
  return jnp.mean(jnp.abs(predictions - targets) ** p)


def softmax_cross_entropy(logits, labels):
  """Mean cross-entropy of integer labels, declared to K-FAC as a categorical model."""
  if module := kfac.loaded():
    module.register_softmax_cross_entropy_loss(logits, labels)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
