"""AdamW, NAdamW and Muon: each against its definition, on tiny trees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers
from configs import base
from errors import ConfigError
from optimizers import first_order

LEARNING_RATE = 0.1


def updates_of(cfg, params, grads_per_step):
  """The updates of optimizers.build(cfg) (at a constant rate) for each step's gradients."""
  tx = optimizers.build(cfg, optax.constant_schedule(cfg.learning_rate))
  state, update = tx.init(params), jax.jit(tx.update)
  for grads in grads_per_step:
    updates, state = update(grads, state, params)
    yield updates
    params = optax.apply_updates(params, updates)


def algoperf_nadamw(params, grads_per_step, lr, b1, b2, eps, weight_decay):
  """AlgoPerf's NAdamW baseline (scale_by_nadam of its jax submission) in float64 numpy: decay on
  every parameter, scaled by the learning rate."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  nu = {k: np.zeros_like(v) for k, v in params.items()}
  for t, grads in enumerate(grads_per_step, start=1):
    step = {}
    for k, g in grads.items():
      g = np.asarray(g, np.float64)
      mu[k] = b1 * mu[k] + (1 - b1) * g
      nu[k] = b2 * nu[k] + (1 - b2) * g * g
      mu_hat = (b1 * mu[k] + (1 - b1) * g) / (1 - b1 ** t)
      nu_hat = nu[k] / (1 - b2 ** t)
      step[k] = -lr * (mu_hat / (np.sqrt(nu_hat) + eps) + weight_decay * params[k])
    yield step
    params = {k: params[k] + step[k] for k in params}


def test_nadamw_is_algoperfs_update():
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(3, 4)).astype(np.float32), 'b': rng.normal(size=(4,)).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)]
  hyper = dict(b1=0.93, b2=0.995, eps=1e-8, weight_decay=0.08)
  cfg = base.optimizer('nadamw', learning_rate=LEARNING_RATE, decay_rank1=True, **hyper)
  ours = list(updates_of(cfg, jax.tree.map(jnp.asarray, params), [jax.tree.map(jnp.asarray, g) for g in grads]))
  reference = list(algoperf_nadamw(params, grads, LEARNING_RATE, **hyper))
  for step, (got, want) in enumerate(zip(ours, reference)):
    for k in params:
      np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-5, atol=1e-7, err_msg=f'step {step} {k}')


def test_optax_nesterov_adam_is_not_algoperfs():
  """Why NAdam is written out: at step 1 AlgoPerf's direction is (b1 + 1 - b1) / (1 - b1) = 1.9 x sign(g)
  (b1 = 0.9), optax's nesterov=True b1^2 / (1 - b1^2) + 1 = 1.47 x sign(g)."""
  g = jnp.array([1.0, -2.0])
  optax_nesterov = optax.scale_by_adam(nesterov=True)
  ours = first_order.scale_by_nadam(b1=0.9, b2=0.999, eps=1e-8)
  np.testing.assert_allclose(optax_nesterov.update(g, optax_nesterov.init(g))[0], [1.47368, -1.47368], rtol=1e-5)
  np.testing.assert_allclose(ours.update(g, ours.init(g))[0], [1.9, -1.9], rtol=1e-5)


def test_adamw_is_adam_with_decoupled_decay():
  params = {'w': jnp.arange(6.0).reshape(2, 3), 'b': jnp.ones(3)}
  grads = [{'w': jnp.linspace(-1, 1, 6).reshape(2, 3), 'b': jnp.full(3, 0.5)}] * 3
  adamw = list(updates_of(base.optimizer('adamw', learning_rate=LEARNING_RATE, weight_decay=0.5), params, grads))
  reference = optax.adamw(LEARNING_RATE, weight_decay=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  state = reference.init(params)
  for got in adamw:
    want, state = reference.update(grads[0], state, params)
    params = optax.apply_updates(params, want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)


def test_adamw_and_nadamw_refuse_coupled_decay():
  for name in ('adamw', 'nadamw'):
    with pytest.raises(ConfigError, match=f"weight_decay_mode='coupled': {name} is Adam with decoupled"):
      optimizers.build(base.optimizer(name, weight_decay_mode='coupled'), optax.constant_schedule(0.1))


def _muon_setup():
  """Parameters and gradients of the kinds Muon tells apart, named as the tasks name them."""
  shapes = {'embed/embedding': (16, 8), 'block_0/mlp/kernel': (8, 12), 'block_0/mlp/bias': (12,),
            'block_0/norm/scale': (8,), 'conv/kernel': (3, 3, 4, 6), 'head/kernel': (12, 3)}
  keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(shapes))
  tree = {}
  for i, (path, shape) in enumerate(shapes.items()):
    *outer, last = path.split('/')
    node = tree
    for key in outer:
      node = node.setdefault(key, {})
    node[last] = (jax.random.normal(keys[2 * i], shape), jax.random.normal(keys[2 * i + 1], shape))
  is_pair = lambda x: isinstance(x, tuple)
  return jax.tree.map(lambda pair: pair[0], tree, is_leaf=is_pair), jax.tree.map(lambda pair: pair[1], tree, is_leaf=is_pair)


def test_muon_orthogonalizes_hidden_matrices_and_leaves_the_rest_to_adam():
  params, grads = _muon_setup()
  cfg = base.optimizer('muon', learning_rate=LEARNING_RATE, adam_learning_rate_ratio=0.5)
  (updates,) = updates_of(cfg, params, [grads])
  # Hidden matrices: one step of Muon is the orthogonalized gradient (Nesterov, bias-corrected): its
  # singular values all in Newton-Schulz's band (about 0.7-1.2), x lr x sqrt(max(1, out / in)).
  for leaf, shape_scale in ((updates['block_0']['mlp']['kernel'], np.sqrt(12 / 8)),
                            (updates['conv']['kernel'].reshape(36, 6), 1.0)):
    singular = np.linalg.svd(np.asarray(leaf), compute_uv=False) / (LEARNING_RATE * shape_scale)
    assert 0.6 < singular.min() and singular.max() < 1.3, singular
  # Embedding, head, vectors: Adam's first step, -sign(g), at lr x adam_learning_rate_ratio.
  for path in (('embed', 'embedding'), ('head', 'kernel'), ('block_0', 'mlp', 'bias'), ('block_0', 'norm', 'scale')):
    got, grad = updates, grads
    for key in path:
      got, grad = got[key], grad[key]
    np.testing.assert_allclose(got, -LEARNING_RATE * 0.5 * np.sign(grad), rtol=1e-5, err_msg='/'.join(path))


def test_muon_decays_each_group_at_its_own_rate():
  params, _ = _muon_setup()
  zeros = jax.tree.map(jnp.zeros_like, params)
  cfg = base.optimizer('muon', learning_rate=LEARNING_RATE, adam_learning_rate_ratio=0.5, weight_decay=0.1)
  (updates,) = updates_of(cfg, params, [zeros])
  np.testing.assert_allclose(updates['conv']['kernel'], -LEARNING_RATE * 0.1 * params['conv']['kernel'], rtol=1e-5)
  np.testing.assert_allclose(updates['head']['kernel'], -LEARNING_RATE * 0.5 * 0.1 * params['head']['kernel'],
                             rtol=1e-5)
  np.testing.assert_array_equal(updates['block_0']['mlp']['bias'], 0.0)  # rank 1: no decay


@pytest.mark.parametrize('name,field,value', [
    ('muon', 'momentum', 1.0),
    ('muon', 'ns_steps', 0),
    ('muon', 'ns_coeffs', (3.4, -4.8)),
    ('muon', 'adam_learning_rate_ratio', -1.0),
    ('muon', 'adam_paths', ('embed', '')),
    ('muon', 'b2', 1.5),
    ('nadamw', 'b1', -0.1),
    ('adamw', 'eps', float('nan')),
])
def test_a_bad_value_is_one_config_error_naming_its_field(name, field, value):
  with pytest.raises(ConfigError, match=f'optimizer.{field}='):
    optimizers.build(base.optimizer(name, **{field: value}), optax.constant_schedule(0.1))
