import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import optimizers
from configs import base
from errors import ConfigError
from optimizers import schedules


def schedule_config(**kw):
  return ml_collections.ConfigDict({**dict(warmup_steps=0, decay='constant', power=2.0, end_factor=0.0), **kw})


@pytest.mark.parametrize('decay,step,expected', [
    ('constant', 50, 1.0),
    ('linear', 60, 0.5),          # halfway from the end of warm-up (10) to 110
    ('cosine', 60, 0.5),
    ('polynomial', 60, 0.25),     # (1 - 0.5)^2
    ('rsqrt', 30, np.sqrt(10 / 30)),
])
def test_schedules_after_warmup(decay, step, expected):
  fn = schedules.build(schedule_config(warmup_steps=10, decay=decay), peak=1.0, num_steps=110)
  assert float(fn(5)) == pytest.approx(0.5)   # linear warm-up
  assert float(fn(10)) == pytest.approx(1.0)  # peak at the end of warm-up
  assert float(fn(step)) == pytest.approx(expected, rel=1e-5)


def test_schedule_rejects_unknown_decay():
  with pytest.raises(ConfigError, match='schedule.decay'):
    schedules.build(schedule_config(decay='exp'), 1.0, 10)


def matrices_only(params):
  return jax.tree.map(lambda x: x.ndim > 1, params)


def run_updates(cfg, params, grads, steps=1):
  tx = optimizers.build(cfg, optax.constant_schedule(cfg.learning_rate))
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize('name,reference', [
    ('sgd', lambda: optax.sgd(0.1, momentum=0.9, nesterov=True)),
    ('adam', lambda: optax.adam(0.1)),
    ('adagrad', lambda: optax.adagrad(0.1)),
    ('lamb', lambda: optax.lamb(0.1, weight_decay=0.0)),
])
def test_registered_optimizers_match_optax(name, reference):
  extra = {'nesterov': True} if name == 'sgd' else {}
  cfg = base.optimizer(name, learning_rate=0.1, **extra)
  params = {'w': jnp.arange(6.0).reshape(2, 3)}
  grads = {'w': jnp.linspace(-1, 1, 6).reshape(2, 3)}
  ours = run_updates(cfg, params, grads, steps=3)
  tx = reference()
  state, expected = tx.init(params), params
  for _ in range(3):
    updates, state = tx.update(grads, state, expected)
    expected = optax.apply_updates(expected, updates)
  np.testing.assert_allclose(ours['w'], expected['w'], rtol=1e-6)


def test_decoupled_weight_decay_is_adamw_and_skips_rank1():
  cfg = base.optimizer('adam', learning_rate=0.1, weight_decay=0.5)
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
  grads = jax.tree.map(jnp.ones_like, params)
  ours = run_updates(cfg, params, grads)
  adamw = optax.adamw(0.1, weight_decay=0.5, mask=matrices_only)
  updates, _ = adamw.update(grads, adamw.init(params), params)
  expected = optax.apply_updates(params, updates)
  np.testing.assert_allclose(ours['w'], expected['w'], rtol=1e-6)
  np.testing.assert_allclose(ours['b'], expected['b'], rtol=1e-6)
  assert float(ours['w'][0, 0]) < float(ours['b'][0])  # only the matrix was decayed


@pytest.mark.parametrize('name,extra,reference', [
    ('lamb', {}, lambda: optax.lamb(0.1, weight_decay=0.5, mask=matrices_only)),
    ('lars', {'nesterov': True}, lambda: optax.lars(0.1, weight_decay=0.5, weight_decay_mask=matrices_only,
                                                     trust_ratio_mask=matrices_only, nesterov=True)),
])
def test_trust_ratio_optimizers_decay_weights_inside_the_ratio(name, extra, reference):
  """Equal to optax's own over 3 steps (constant rate): matrices decayed and rescaled, rank-1 neither."""
  cfg = base.optimizer(name, learning_rate=0.1, weight_decay=0.5, **extra)
  params = {'w': jnp.arange(1.0, 7.0).reshape(2, 3), 'b': jnp.ones(3)}
  grads = {'w': jnp.linspace(-1, 1, 6).reshape(2, 3), 'b': jnp.full(3, 0.5)}
  ours = run_updates(cfg, params, grads, steps=3)
  tx = reference()
  state, expected = tx.init(params), params
  for _ in range(3):
    updates, state = tx.update(grads, state, expected)
    expected = optax.apply_updates(expected, updates)
  for key in params:
    np.testing.assert_allclose(ours[key], expected[key], rtol=1e-6)
  undecayed = run_updates(base.optimizer(name, learning_rate=0.1, **extra), params, grads, steps=3)
  assert not np.allclose(undecayed['w'], ours['w'])


def test_coupled_weight_decay_adds_l2_to_the_gradient():
  cfg = base.optimizer('sgd', learning_rate=0.1, momentum=0.0, weight_decay=0.5,
                          weight_decay_mode='coupled', decay_rank1=True)
  params = {'b': jnp.full(3, 2.0)}
  ours = run_updates(cfg, params, {'b': jnp.zeros(3)})
  np.testing.assert_allclose(ours['b'], 2.0 - 0.1 * 0.5 * 2.0)


@pytest.mark.parametrize('name,mode', [
    ('sgd', 'coupled'), ('adam', 'decoupled'), ('adagrad', 'coupled'), ('lamb', 'decoupled'), ('lars', 'decoupled'),
    ('shampoo', 'decoupled'), ('shampoo', 'before_momentum'),
])
def test_every_optimizer_decays_rank1_parameters_only_with_decay_rank1(name, mode):
  """Zero gradients: the decay alone moves the parameters, a bias only when decay_rank1."""
  params = {'w': jnp.ones((2, 3)), 'b': jnp.ones(3)}
  grads = jax.tree.map(jnp.zeros_like, params)
  for decay_rank1 in (False, True):
    cfg = base.optimizer(name, learning_rate=0.1, weight_decay=0.5, weight_decay_mode=mode, decay_rank1=decay_rank1)
    moved = run_updates(cfg, params, grads)
    assert not np.allclose(moved['w'], params['w'])
    assert np.allclose(moved['b'], params['b']) != decay_rank1


def test_clipping_bounds_the_update():
  cfg = base.optimizer('sgd', learning_rate=1.0, momentum=0.0, grad_clip_norm=1.0)
  ours = run_updates(cfg, {'w': jnp.zeros(4)}, {'w': jnp.full(4, 10.0)})
  assert float(jnp.linalg.norm(ours['w'])) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize('name,field,value', [
    ('adam', 'b2', 1.5), ('adam', 'eps', -1.0), ('sgd', 'momentum', -0.1),
    ('adagrad', 'initial_accumulator_value', -1.0), ('sgd', 'learning_rate', -0.1),
    ('sgd', 'weight_decay_mode', 'sideways'), ('adam', 'weight_decay_mode', 'before_momentum'),
    ('adam', 'learning_rate', float('nan')),
    ('adam', 'eps', float('inf')), ('sgd', 'weight_decay', float('nan')),
])
def test_bad_hyperparameters_name_the_field(name, field, value):
  cfg = base.optimizer(name, **{field: value})
  with pytest.raises(ConfigError, match=field):
    optimizers.build(cfg, optax.constant_schedule(0.1))


def test_unknown_optimizer_and_field():
  with pytest.raises(ConfigError, match="unknown optimizer 'lion'"):
    base.optimizer('lion')
  with pytest.raises(ConfigError, match='b3'):
    base.optimizer('adam', b3=0.1)


@pytest.mark.parametrize('name', sorted(optimizers.REGISTRY))
def test_config_defaults_hold_exactly_the_fields_each_builder_reads(name):
  assert set(base.optimizer(name)) == {'name', *optimizers.COMMON_FIELDS, *optimizers.REGISTRY[name].fields}


def test_a_block_that_is_not_its_builders_fields_is_refused():
  cfg = base.optimizer('adam')
  with cfg.unlocked():
    del cfg['b2']
  with pytest.raises(ConfigError, match='lacks b2'):
    optimizers.build(cfg, optax.constant_schedule(0.1))
  cfg = base.optimizer('adam')
  cfg.momentum = 0.9
  with pytest.raises(ConfigError, match='unknown adam optimizer fields: momentum'):
    optimizers.build(cfg, optax.constant_schedule(0.1))
  with pytest.raises(ConfigError, match="unknown optimizer 'lion'"):
    optimizers.validate(ml_collections.ConfigDict(dict(name='lion')))
