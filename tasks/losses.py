"""Losses that also declare themselves to K-FAC (kfac-jax loss tags).

Every task computes its loss through these helpers. K-FAC reads the tag to know
the model's predictive distribution, from which it estimates curvature. The tag
is an identity in evaluation and differentiation, and it is only emitted once
an optimizer has imported kfac-jax in the process, so other optimizers do not even
pay for kfac-jax's (slow) import. Tasks never import the optimizers.
"""

import sys

import jax
import jax.numpy as jnp
import optax


def _kfac_jax():
  """kfac_jax if something in this process imported it (the K-FAC optimizer), else None."""
  return sys.modules.get('kfac_jax')


def lp_loss(predictions, targets, p: float):
  """mean |prediction - target|^p, declared to K-FAC as squared error (a Gaussian model).

  K-FAC's curvature is then the Gauss-Newton matrix of the squared error: exact for
  p = 2, for p > 2 a proxy with the same Kronecker structure (input covariance x
  output-gradient covariance) that differs from the l_p Hessian by a per-example weight.
  """
  if module := _kfac_jax():
    module.register_squared_error_loss(predictions[:, None], targets[:, None])
  return jnp.mean(jnp.abs(predictions - targets) ** p)


def softmax_cross_entropy(logits, labels, weights=None, label_smoothing: float = 0.0):
  """Weighted mean cross-entropy of integer labels, declared to K-FAC as a categorical model.

  `weights` (default all 1) has the labels' shape, e.g. 0 on padding tokens. With
  `label_smoothing` the target puts that much mass uniformly over the classes; K-FAC's
  curvature is the model's Fisher either way (it does not depend on the targets).
  """
  num_classes = logits.shape[-1]
  logits, labels = logits.reshape(-1, num_classes), labels.reshape(-1)
  weights = jnp.ones(labels.shape, logits.dtype) if weights is None else weights.reshape(-1)
  total = jnp.maximum(jnp.sum(weights), 1.0)
  if module := _kfac_jax():
    # kfac-jax averages the registered loss over all rows; rescale to our per-weight mean.
    module.register_softmax_cross_entropy_loss(logits, labels, mask=weights > 0,
                                               weight=labels.shape[0] / total)
  if label_smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    per_row = optax.softmax_cross_entropy(logits, targets)
  else:
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(per_row * weights) / total


def sigmoid_cross_entropy(logits, labels):
  """Mean binary cross-entropy of logits [batch] against 0/1 labels, declared to K-FAC as Bernoulli."""
  logits = logits.reshape(-1, 1)
  labels = labels.reshape(-1, 1).astype(logits.dtype)
  if module := _kfac_jax():
    module.register_sigmoid_cross_entropy_loss(logits, labels)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
