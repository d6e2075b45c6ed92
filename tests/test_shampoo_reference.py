"""Shampoo against the public reference implementation, precondition-opt 0.3.0's distributed_shampoo.

configs/resnet50_shampoo.py:paper, built as a run builds it, gives the reference's update for every
parameter of a ResNet-shaped tree at every step, before and after Shampoo starts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from precondition import distributed_shampoo as reference

import optimizers
from configs import resnet50_shampoo
from optimizers.shampoo import blocking

# A ResNet's kinds of parameters at width 16: the 7x7 stem (merged to [49, 48]), a 3x3 convolution
# ([9, 16, 16], as the README's [3, 3, 128, 128] -> [9, 128, 128]), a 1x1 one, batch-norm scales and
# biases, and a dense layer cut into a 128-row block and a ragged 32-row one, with its bias.
SHAPES = {'stem': (7, 7, 3, 16), 'stem_bn_scale': (16,), 'stem_bn_bias': (16,), 'conv1x1': (1, 1, 16, 16),
          'conv3x3': (3, 3, 16, 16), 'bn_scale': (16,), 'bn_bias': (16,), 'dense': (160, 16), 'dense_bias': (16,)}
STEPS = 60  # Shampoo starts at step 25 (start_preconditioning_step)
TINY = (10, 30, 31, 45)  # steps whose gradients are 1e-6 of the others': the weight decay dominates them


@pytest.fixture
def old_jax_names(monkeypatch):
  """The tree functions the reference calls by names JAX 0.10 no longer has."""
  for name, function in (('tree_map', jax.tree.map), ('tree_flatten', jax.tree.flatten),
                         ('tree_unflatten', jax.tree.unflatten)):
    monkeypatch.setattr(jax, name, function, raising=False)


def readme_recipe(weight_decay: float) -> optax.GradientTransformation:
  """The reference with its README's ResNet-50 hyperparameters (google-research scalable_shampoo)."""
  return reference.distributed_shampoo(
      learning_rate=13.0, block_size=128, beta1=0.95, beta2=0.85, diagonal_epsilon=0.0, matrix_epsilon=1.5e-5,
      weight_decay=weight_decay, start_preconditioning_step=25, preconditioning_compute_steps=1,
      statistics_compute_steps=1, skip_preconditioning_dim_size_gt=8192, best_effort_shape_interpretation=True,
      graft_type=reference.GraftingType.SGD, nesterov=True, exponent_override=4,
      # The README's [3, 3, 128, 128] -> [9, 128, 128]: its code merged up to the block size.
      merge_small_dims_block_size=128, generate_training_metrics=False)


@pytest.mark.parametrize('shape', [(3, 3, 128, 128), (7, 7, 3, 64), (1, 1, 256, 64), (3, 3, 512, 512), (2048, 1000),
                                   (1000,), (1, 7, 1, 2), (2, 3, 5000, 1, 4), (129, 1, 1, 3)])
@pytest.mark.parametrize('limit', [128, 4096])
def test_small_dimensions_merge_as_the_references(shape, limit):
  layout = blocking.plan([shape], {**resnet50_shampoo.get_config('paper').optimizer,
                                   'merge_small_dims_block_size': limit}).layouts[0]
  assert list(layout.merged) == reference.merge_small_dims(shape, limit)


@pytest.mark.filterwarnings('ignore:Explicitly requested dtype float64')  # the reference asks; float32 it is
def test_paper_config_gives_the_references_update_at_every_step(old_jax_names):
  """Cosine >= 0.999 and norms within 2% per parameter and step, the weight decay and the tiny steps
  included; the learning rate held at its peak (the warm-up's first step is 0). The reference takes
  the recipe's decay for every parameter it is given: as the README, bias and batch-norm variables
  go to a second one without it."""
  config = resnet50_shampoo.get_config('paper').optimizer
  ours = optimizers.build(config, optax.constant_schedule(config.learning_rate))
  labels = {name: 'decayed' if len(shape) > 1 else 'kept' for name, shape in SHAPES.items()}
  theirs = optax.multi_transform({'decayed': readme_recipe(config.weight_decay), 'kept': readme_recipe(0.0)}, labels)
  rng = np.random.default_rng(0)
  params = {name: jnp.asarray(rng.standard_normal(shape), jnp.float32) for name, shape in SHAPES.items()}
  our_state, their_state = ours.init(params), theirs.init(params)
  our_update, their_update = jax.jit(ours.update), jax.jit(theirs.update)
  cosines, ratios = np.zeros((STEPS, len(SHAPES))), np.zeros((STEPS, len(SHAPES)))
  for step in range(STEPS):
    scale = 1e-9 if step in TINY else 1e-3
    grads = {name: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32) for name, shape in SHAPES.items()}
    expected, their_state = their_update(grads, their_state, params)
    actual, our_state = our_update(grads, our_state, params)
    for i, name in enumerate(SHAPES):
      a, b = (np.asarray(x[name], np.float64).ravel() for x in (actual, expected))
      cosines[step, i] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
      ratios[step, i] = np.linalg.norm(a) / np.linalg.norm(b)
    params = optax.apply_updates(params, expected)
  worst = {name: (cosines[:, i].min(), np.abs(ratios[:, i] - 1).max()) for i, name in enumerate(SHAPES)}
  assert all(cosine >= 0.999 and deviation <= 0.02 for cosine, deviation in worst.values()), worst
  # Not the graft alone: every matrix has a root, none failed.
  health = jax.tree.map(float, optimizers.state_metrics('shampoo', detailed=False)(our_state))
  assert health['shampoo_graft_share'] == 0.0 and health['shampoo_failed_roots_total'] == 0.0
