"""Shampoo (optimizers/shampoo) against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import optimizer_defaults
from errors import ConfigError
from optimizers import first_order
from optimizers import shampoo
from trainer import partitioning

DEFAULTS = optimizer_defaults.BY_NAME['shampoo']

# Full-matrix Shampoo alone: no grafting, momentum, merging or delay, and a fixed (absolute) ridge.
PLAIN = dict(graft_type='none', beta1=0.0, beta2=1.0, start_preconditioning_step=0,
             relative_matrix_epsilon=False, matrix_epsilon=1e-3, merge_small_dims_block_size=1)


def scale_by_shampoo(**overrides):
  """The transformation with the config defaults, but for `overrides`."""
  return shampoo.scale_by_shampoo(**{**DEFAULTS, **overrides})


def random_grads(shapes, steps, seed=0):
  rng = np.random.default_rng(seed)
  return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(steps)]


def run(grads, **hyperparameters):
  """scale_by_shampoo's direction at every step of the gradient sequence, and the last state."""
  tx = scale_by_shampoo(**hyperparameters)
  params = jax.tree.map(jnp.zeros_like, grads[0])
  state, update = tx.init(params), jax.jit(tx.update)
  directions = []
  for g in grads:
    direction, state = update(g, state, params)
    directions.append(jax.tree.map(np.asarray, direction))
  return directions, state


def power(a, exponent):
  """Symmetric positive definite `a` to a real power, in float64 through eigh."""
  w, v = np.linalg.eigh(np.asarray(a, np.float64))
  return (v * w**exponent) @ v.T


def gram(t, axis):
  """G_(axis) G_(axis)^T for the mode-`axis` unfolding of t."""
  others = [i for i in range(t.ndim) if i != axis]
  return np.tensordot(t, t, axes=(others, others))


def reference(grads, beta2=1.0, epsilon=1e-3, exponent_override=0, statistics_compute_steps=1,
              refresh=lambda t: True, initial=0.0):
  """Float64 Shampoo directions of one block's gradient sequence (no grafting, momentum or delay), its
  statistics starting at `initial` x I."""
  grads = [np.asarray(g, np.float64) for g in grads]
  p = exponent_override or 2 * grads[0].ndim
  stats = [initial * np.eye(d) for d in grads[0].shape]
  roots = [np.eye(d) for d in grads[0].shape]  # the optimizer's roots before their first refresh
  directions = []
  for t, g in enumerate(grads):
    if t % statistics_compute_steps == 0:
      stats = [s + gram(g, i) if beta2 == 1.0 else beta2 * s + (1 - beta2) * gram(g, i)
               for i, s in enumerate(stats)]
    if refresh(t):
      roots = [power(s + epsilon * np.eye(len(s)), -1 / p) for s in stats]
    direction = g
    for i, root in enumerate(roots):
      direction = np.moveaxis(np.tensordot(root, direction, axes=(1, i)), 0, i)
    directions.append(direction)
  return directions


def graft(grads, graft_type, beta2=1.0, epsilon=1e-10):
  """Float64 graft directions of one parameter's gradient sequence ('none': the gradient)."""
  kind = graft_type.removesuffix('_normalized')
  accumulator, directions = 0.0, []
  for t, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    if graft_type.endswith('_normalized'):
      g = g / np.linalg.norm(g)
    second_moment = accumulator
    if kind == 'adagrad':
      accumulator = second_moment = accumulator + g * g
    elif kind == 'rmsprop':  # bias-corrected, as in Adam
      accumulator = beta2 * accumulator + (1 - beta2) * g * g
      second_moment = accumulator / (1 - beta2 ** (t + 1))
    directions.append(g if kind in ('none', 'sgd') else g / (np.sqrt(second_moment) + epsilon))
  return directions


def rescale(direction, norm_from):
  return direction * np.linalg.norm(norm_from) / np.linalg.norm(direction)


def assert_close(actual, expected, rtol):
  """Elementwise, with the absolute slack scaled to the largest expected entry."""
  expected = np.asarray(expected, np.float64)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                             atol=rtol * np.abs(expected).max())


def test_every_hyperparameter_is_required():
  with pytest.raises(ConfigError, match='missing shampoo hyperparameters: block_size'):
    shampoo.scale_by_shampoo(**{k: v for k, v in DEFAULTS.items() if k != 'block_size'})


def test_defaults():
  assert DEFAULTS == dict(
      block_size=128, beta1=0.9, beta2=0.999, diagonal_epsilon=1e-10, matrix_epsilon=1e-6,
      relative_matrix_epsilon=True, statistics_start_at_epsilon=False, start_preconditioning_step=10,
      preconditioning_compute_steps=1, statistics_compute_steps=1, graft_type='rmsprop_normalized',
      graft_granularity='block', nesterov=True, moving_average_for_momentum=True, separate_graft_momentum=False,
      exponent_override=0, inverse_failure_threshold=0.1, skip_preconditioning_dim_size_gt=4096,
      precondition_embeddings=False, precondition_rank1=False, merge_small_dims_block_size=4096,
      root_method='newton', newton_iterations=100, newton_tolerance=1e-6, warm_eigh_tolerance=0.02,
      statistics_dtype='float32', root_refresh='inline', root_staleness=0)


@pytest.mark.parametrize('overrides', [
    dict(root_method='newton'),
    dict(root_method='eigh'),
    dict(root_method='newton', beta2=0.9),
    dict(root_method='eigh', exponent_override=4, statistics_compute_steps=2),
    dict(root_method='warm_eigh'),
], ids=['newton', 'eigh', 'ema', 'override', 'warm_eigh'])
def test_matches_numpy_full_matrix_shampoo(overrides):
  """A matrix and a rank-3 tensor in one tree, every step, against float64."""
  shapes = {'w': (6, 4), 't': (3, 4, 5)}
  grads = random_grads(shapes, steps=4)
  ours, _ = run(grads, **{**PLAIN, **overrides})
  reference_kw = {k: v for k, v in overrides.items() if k != 'root_method'}
  for name in shapes:
    expected = reference([g[name] for g in grads], **reference_kw)
    for t in range(4):
      assert_close(ours[t][name], expected[t], rtol=1e-3)


def test_shampoo_is_minus_learning_rate_times_direction():
  """The chain with a learning rate (a bias keeps it cheap: no roots to compile)."""
  grads = random_grads({'b': (5,)}, steps=2)
  hyperparameters = {**PLAIN, 'graft_type': 'adagrad'}
  directions, _ = run(grads, **hyperparameters)
  tx = shampoo.shampoo(0.5, **{**DEFAULTS, **hyperparameters})
  params = {'b': jnp.zeros(5)}
  state, update = tx.init(params), jax.jit(tx.update)
  for g, direction in zip(grads, directions):
    updates, state = update(g, state, params)
    assert_close(updates['b'], -0.5 * direction['b'], rtol=1e-6)


def test_block_size_covering_every_dim_is_no_blocking():
  """block_size equal to the largest dim and far above it: bitwise the same (default settings otherwise)."""
  shapes = {'w': (8, 10), 't': (2, 2, 2)}
  grads = random_grads(shapes, steps=3)
  hyperparameters = dict(start_preconditioning_step=0, merge_small_dims_block_size=1)
  exact, _ = run(grads, block_size=10, **hyperparameters)
  loose, _ = run(grads, block_size=128, **hyperparameters)
  for a, b in zip(exact, loose):
    for name in shapes:
      np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize('graft_type,granularity', [('none', 'block'), ('adagrad_normalized', 'block'),
                                                     ('adagrad_normalized', 'layer')])
def test_blocks_are_preconditioned_and_grafted_independently(graft_type, granularity):
  """8x10 in blocks of 4: 4x4 blocks and 4x2 ones (padded inside), each its own Shampoo; each its own
  graft norm, or (layer) the whole parameter one."""
  grads = [g['w'] for g in random_grads({'w': (8, 10)}, steps=3)]
  ours, _ = run([{'w': g} for g in grads],
                **{**PLAIN, 'block_size': 4, 'graft_type': graft_type, 'graft_granularity': granularity})
  grafted = graft(grads, graft_type)
  expected = [np.zeros((8, 10)) for _ in range(3)]
  for r in range(0, 8, 4):
    for c in range(0, 10, 4):
      preconditioned = reference([g[r:r + 4, c:c + 4] for g in grads])
      for t in range(3):
        block = preconditioned[t]
        if granularity == 'block' and graft_type != 'none':
          block = rescale(block, grafted[t][r:r + 4, c:c + 4])
        expected[t][r:r + 4, c:c + 4] = block
  for t in range(3):
    if granularity == 'layer':
      expected[t] = rescale(expected[t], grafted[t])
    assert_close(ours[t]['w'], expected[t], rtol=1e-3)


@pytest.mark.parametrize('graft_type', ['sgd', 'adagrad', 'rmsprop', 'rmsprop_normalized'])
def test_grafting_takes_the_graft_norm(graft_type):
  """Graft alone before the start step; after it, Shampoo's direction with the graft's norm."""
  grads = [g['w'] for g in random_grads({'w': (6, 4)}, steps=3)]
  ours, _ = run([{'w': g} for g in grads],
                **{**PLAIN, 'graft_type': graft_type, 'beta2': 0.9, 'start_preconditioning_step': 1})
  grafted, preconditioned = graft(grads, graft_type, beta2=0.9), reference(grads, beta2=0.9)
  assert_close(ours[0]['w'], grafted[0], rtol=1e-5)
  for t in (1, 2):
    assert np.linalg.norm(ours[t]['w']) == pytest.approx(np.linalg.norm(grafted[t]), rel=1e-5)
    assert_close(ours[t]['w'], rescale(preconditioned[t], grafted[t]), rtol=1e-3)


def test_root_schedule_start_step_and_one_compile():
  """Roots at the start step 4, then at t % 3 == 0; graft alone before it; one trace for all steps."""
  grads = [g['w'] for g in random_grads({'w': (6, 4)}, steps=10)]
  tx = scale_by_shampoo(**{**PLAIN, 'graft_type': 'adagrad', 'start_preconditioning_step': 4,
                                   'preconditioning_compute_steps': 3})
  traces = []

  @jax.jit
  def update(g, state, params):
    traces.append(None)
    return tx.update(g, state, params)

  params = {'w': jnp.zeros((6, 4))}
  state = tx.init(params)
  grafted = graft(grads, 'adagrad')
  preconditioned = reference(grads, refresh=lambda t: t >= 4 and (t % 3 == 0 or t == 4))
  for t, g in enumerate(grads):
    direction, state = update({'w': g}, state, params)
    if t < 4:
      assert_close(direction['w'], grafted[t], rtol=1e-5)
    else:
      assert_close(direction['w'], rescale(preconditioned[t], grafted[t]), rtol=1e-3)
  assert state.count.shape == () and state.count.dtype == jnp.int32 and int(state.count) == 10
  assert int(state.root_refreshes) == 3  # t = 4, 6, 9: none before the start (they would go unused)
  assert len(traces) == 1


def test_failed_roots_keep_the_previous_root():
  """Roots start as identities; NaN statistics keep the last good roots and count each failed matrix."""
  grads = random_grads({'w': (6, 4)}, steps=2)
  tx = scale_by_shampoo(**PLAIN)
  params = {'w': jnp.zeros((6, 4))}
  state, update = tx.init(params), jax.jit(tx.update)
  for roots in state.roots.values():
    np.testing.assert_array_equal(roots, np.broadcast_to(np.eye(roots.shape[-1]), roots.shape))
  _, state = update(grads[0], state, params)
  assert int(state.failed_roots) == 0
  previous = jax.tree.map(np.asarray, state.roots)
  poisoned = sorted(state.stats)[0]
  state = state._replace(stats={**state.stats, poisoned: jnp.full_like(state.stats[poisoned], jnp.nan)})
  _, state = update(grads[1], state, params)
  assert int(state.root_refreshes) == 2
  np.testing.assert_array_equal(state.roots[poisoned], previous[poisoned])
  assert int(state.failed_roots) == state.stats[poisoned].shape[0]
  for key in set(state.roots) - {poisoned}:
    assert np.all(np.isfinite(state.roots[key]))
    assert not np.array_equal(state.roots[key], previous[key])


def test_bfloat16_statistics():
  """Statistics and roots stored in bfloat16; directions within 5% of float32's."""
  shapes = {'w': (6, 5), 'b': (5,)}
  grads = random_grads(shapes, steps=3)
  hyperparameters = dict(start_preconditioning_step=1, merge_small_dims_block_size=1)
  full, _ = run(grads, **hyperparameters)
  half, state = run(grads, statistics_dtype='bfloat16', **hyperparameters)
  for leaf in jax.tree.leaves((state.stats, state.roots)):
    assert leaf.dtype == jnp.bfloat16
  for a, b in zip(half, full):
    for name in shapes:
      assert np.all(np.isfinite(a[name]))
      assert np.linalg.norm(a[name] - b[name]) < 5e-2 * np.linalg.norm(b[name])


def test_small_dims_are_merged():
  """[2, 3, 4] with a merge limit of 6 is the [6, 4] matrix; [3, 3, 64, 64] gets [576, 64] statistics."""
  grads = random_grads({'t': (2, 3, 4)}, steps=2)
  merged, _ = run(grads, **{**PLAIN, 'merge_small_dims_block_size': 6})
  matrix, _ = run([{'t': g['t'].reshape(6, 4)} for g in grads], **PLAIN)
  for a, b in zip(merged, matrix):
    np.testing.assert_allclose(a['t'].reshape(6, 4), b['t'], rtol=1e-6)
  state = scale_by_shampoo(block_size=1024).init({'k': jnp.zeros((3, 3, 64, 64))})
  assert {s.shape[-1] for s in state.stats.values()} == {576, 64}


@pytest.mark.parametrize('graft_type', ['adagrad', 'none'])
def test_rank1_and_oversized_params_get_the_graft_only(graft_type):
  """A bias and a matrix with a dim above skip_preconditioning_dim_size_gt=5; a 3x4 matrix is preconditioned."""
  shapes = {'b': (5,), 'w': (6, 4), 'm': (3, 4)}
  grads = random_grads(shapes, steps=2)
  ours, _ = run(grads, **{**PLAIN, 'graft_type': graft_type, 'skip_preconditioning_dim_size_gt': 5})
  for name in ('b', 'w'):
    expected = graft([g[name] for g in grads], graft_type)
    for t in range(2):
      assert_close(ours[t][name], expected[t], rtol=1e-5)
  m = [g['m'] for g in grads]
  grafted, preconditioned = graft(m, graft_type), reference(m)
  for t in range(2):
    expected = preconditioned[t] if graft_type == 'none' else rescale(preconditioned[t], grafted[t])
    assert_close(ours[t]['m'], expected, rtol=1e-3)


def test_precondition_rank1_gives_vectors_statistics_and_scalars_the_graft():
  """A bias with precondition_rank1: its 5x5 statistic, direction L^{-1/2} g; a scalar keeps the graft."""
  grads = random_grads({'b': (5,), 's': ()}, steps=3)
  ours, state = run(grads, **{**PLAIN, 'precondition_rank1': True, 'graft_type': 'sgd'})
  assert {k: v.shape for k, v in state.stats.items()} == {'5_p2_m0': (1, 5, 5)}
  preconditioned = reference([g['b'] for g in grads])
  for t in range(3):
    assert_close(ours[t]['b'], rescale(preconditioned[t], grads[t]['b']), rtol=1e-3)
    np.testing.assert_array_equal(ours[t]['s'], grads[t]['s'])


def test_statistics_start_at_epsilon():
  """Real rows start at matrix_epsilon x I and the roots take it in; padding rows stay identities."""
  grads = random_grads({'w': (6, 4)}, steps=3)
  ours, state = run(grads, **{**PLAIN, 'statistics_start_at_epsilon': True})
  expected = reference([g['w'] for g in grads], initial=1e-3)
  for t in range(3):
    assert_close(ours[t]['w'], expected[t], rtol=1e-3)
  init = scale_by_shampoo(**{**PLAIN, 'statistics_start_at_epsilon': True}, stack_multiple=2).init(
      {'w': jnp.zeros((6, 4))})
  np.testing.assert_allclose(init.stats['6x4_p4_m1'], [1e-3 * np.eye(4), np.eye(4)])


@pytest.mark.parametrize('separate', [False, True])
def test_weight_decay_before_momentum(separate):
  """The reference's rule: decay added to the (layer-)grafted direction, then Nesterov momentum; with
  separate_graft_momentum the graft's and Shampoo's directions each keep a momentum from the first
  update (roots from the first update too) and the step takes the graft's before the start. The
  mask keeps the bias undecayed."""
  beta1, decay, start = 0.8, 0.1, 2
  shapes = {'w': (6, 4), 'b': (3,)}
  grads = random_grads(shapes, steps=5)
  params = {name: jnp.asarray(np.random.default_rng(1).standard_normal(s), jnp.float32) for name, s in shapes.items()}
  tx = scale_by_shampoo(**{**PLAIN, 'graft_type': 'sgd', 'graft_granularity': 'layer', 'beta1': beta1,
                           'start_preconditioning_step': start, 'separate_graft_momentum': separate,
                           'moving_average_for_momentum': False},
                        weight_decay=decay, weight_decay_mask=first_order.decay_mask(False))
  state, update = tx.init(params), jax.jit(tx.update)
  w = [g['w'] for g in grads]
  preconditioned = reference(w, refresh=(lambda t: True) if separate else (lambda t: t >= start))
  shampoo_m = graft_m = bias_m = 0.0
  for t, g in enumerate(grads):
    direction, state = update(g, state, params)
    to_shampoo = rescale(preconditioned[t], w[t]) + decay * np.asarray(params['w'])
    to_graft = w[t] + decay * np.asarray(params['w'])
    if separate:
      shampoo_m, graft_m = beta1 * shampoo_m + to_shampoo, beta1 * graft_m + to_graft
      expected = beta1 * shampoo_m + to_shampoo if t >= start else beta1 * graft_m + to_graft
    else:
      chosen = to_shampoo if t >= start else to_graft
      shampoo_m = beta1 * shampoo_m + chosen
      expected = beta1 * shampoo_m + chosen
    bias_m = beta1 * bias_m + g['b']
    assert_close(direction['w'], expected, rtol=1e-3)
    assert_close(direction['b'], beta1 * bias_m + g['b'], rtol=1e-5)
  assert (state.graft_momentum is not None) == separate


def test_precondition_embeddings_uses_the_small_dims_statistics_only():
  """A [9, 4] table above skip=5 with precondition_embeddings: G R^{-1/2}, R the 4x4 column statistic.

  Its 9 rows are one block even with block_size 2 (a skipped dim is never cut); the
  4 columns are cut in two, each with its own 2x2 statistic. A [6, 7, 3] tensor
  keeps statistics on dims 0 and 2 (p = 4). Grafting sets each row's norm.
  """
  grads = random_grads({'e': (9, 4), 't': (6, 7, 3)}, steps=3)
  hp = {**PLAIN, 'skip_preconditioning_dim_size_gt': 6, 'precondition_embeddings': True}
  ours, state = run(grads, **hp)
  assert {k: v.shape for k, v in state.stats.items()} == {'9ux4_p2_m1': (1, 4, 4), '6x7ux3_p4_m0': (1, 6, 6),
                                                          '6x7ux3_p4_m2': (1, 3, 3)}
  for t in range(3):
    r = sum(gram(g['e'], 1) for g in grads[:t + 1]) + 1e-3 * np.eye(4)
    assert_close(ours[t]['e'], grads[t]['e'] @ power(r, -1 / 2), rtol=1e-3)
    s0, s2 = (sum(gram(g['t'], i) for g in grads[:t + 1]) for i in (0, 2))
    expected = np.einsum('ia,ajc,cd->ijd', power(s0 + 1e-3 * np.eye(6), -1 / 4), grads[t]['t'],
                         power(s2 + 1e-3 * np.eye(3), -1 / 4))
    assert_close(ours[t]['t'], expected, rtol=1e-3)
  blocked, state = run(grads, **{**hp, 'block_size': 2})
  assert state.stats['9ux2_p2_m1'].shape == (2, 2, 2)
  for t in range(3):
    expected = np.concatenate([
        grads[t]['e'][:, cols] @ power(sum(gram(g['e'][:, cols], 1) for g in grads[:t + 1])
                                       + 1e-3 * np.eye(2), -1 / 2)
        for cols in (slice(0, 2), slice(2, 4))], axis=1)
    assert_close(blocked[t]['e'], expected, rtol=1e-3)
  # Grafted, every row of the table takes its own graft norm; rows of the tensor's skipped dim too.
  grafted_run, _ = run(grads, **{**hp, 'graft_type': 'adagrad'})
  for t in range(3):
    for name in ('e', 't'):
      grafted = graft([g[name] for g in grads], 'adagrad')[t]
      np.testing.assert_allclose(np.linalg.norm(grafted_run[t][name], axis=(0, 2) if name == 't' else 1),
                                 np.linalg.norm(grafted, axis=(0, 2) if name == 't' else 1), rtol=1e-4)
    r = sum(gram(g['e'], 1) for g in grads[:t + 1]) + 1e-3 * np.eye(4)
    direction = grads[t]['e'] @ power(r, -1 / 2)
    rows = np.linalg.norm(graft([g['e'] for g in grads], 'adagrad')[t], axis=1, keepdims=True)
    assert_close(grafted_run[t]['e'], direction * rows / np.linalg.norm(direction, axis=1, keepdims=True),
                 rtol=1e-3)


@pytest.mark.parametrize('field,value', [
    ('block_size', 0), ('beta2', 1.5), ('beta1', -0.1), ('graft_type', 'nope'), ('graft_granularity', 'row'),
    ('matrix_epsilon', -1.0), ('root_method', 'svd'), ('matrix_epsilon', float('nan')),
    ('inverse_failure_threshold', float('nan')),
])
def test_bad_hyperparameters_name_the_field(field, value):
  with pytest.raises(ConfigError, match=rf'\b{field}\b'):
    scale_by_shampoo(**{field: value})


@pytest.mark.parametrize('nesterov,moving_average', [(False, False), (True, False), (True, True)])
def test_momentum_on_the_grafted_direction(nesterov, moving_average):
  """beta1 momentum over the (here sgd-grafted, pre-start) direction: heavy ball or EMA, Nesterov."""
  beta1 = 0.8
  tx = scale_by_shampoo(beta1=beta1, nesterov=nesterov, moving_average_for_momentum=moving_average,
                                graft_type='sgd', start_preconditioning_step=100)
  rng = np.random.default_rng(7)
  grads = [rng.normal(size=(3, 2)) for _ in range(4)]
  state = tx.init({'w': jnp.zeros((3, 2))})
  fresh = 1 - beta1 if moving_average else 1.0
  m = np.zeros((3, 2))
  for g in grads:
    update, state = tx.update({'w': jnp.asarray(g, jnp.float32)}, state)
    m = beta1 * m + fresh * g
    expected = beta1 * m + fresh * g if nesterov else m
    np.testing.assert_allclose(update['w'], expected, rtol=1e-5)


def _dot_generals(jaxpr):
  """Every dot_general of a jaxpr, inside loops, conds and nested jits too."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _dot_generals(inner)


@pytest.mark.parametrize('root_method, root_refresh', [('newton', 'inline'), ('warm_eigh', 'inline'),
                                                       ('warm_eigh', 'async')])
def test_a_fresh_state_can_be_donated(root_method, root_refresh):
  """The trainer donates the state to each step: no two leaves may share a buffer."""
  tx = shampoo.scale_by_shampoo(**{**DEFAULTS, 'root_method': root_method, 'root_refresh': root_refresh,
                                   'block_size': 8})
  leaves = jax.tree.leaves(tx.init([jnp.zeros((8, 8)), jnp.zeros((16, 8))]))
  pointers = [leaf.unsafe_buffer_pointer() for leaf in leaves]
  assert len(set(pointers)) == len(pointers)


@pytest.mark.parametrize('root_method', ['newton', 'eigh', 'warm_eigh'])
def test_every_float32_product_of_an_update_asks_for_full_precision(root_method):
  """On TPU (bfloat16 passes) and GPU (TF32) a product without HIGHEST silently loses precision."""
  params = {'conv': jnp.zeros((3, 3, 8, 16)), 'dense': jnp.zeros((16, 10)), 'bias': jnp.zeros(10)}
  tx = shampoo.shampoo(0.1, **{**DEFAULTS, 'root_method': root_method, 'block_size': 8, 'graft_type': 'sgd',
                               'exponent_override': 4, 'start_preconditioning_step': 1,
                               'merge_small_dims_block_size': 8})
  state = tx.init(params)
  jaxpr = jax.make_jaxpr(tx.update)(params, state, params).jaxpr
  products = [eqn for eqn in _dot_generals(jaxpr) if eqn.invars[0].aval.dtype == jnp.float32]
  assert len(products) > 10
  loose = [str(eqn) for eqn in products
           if eqn.params['precision'] != (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)]
  assert not loose, loose[0]


def test_a_newton_iteration_that_turns_non_finite_is_a_failed_root():
  """An overflowing statistic (its Newton iterates turn non-finite) reports an infinite error, so
  its root is rejected; the other matrix of the stack is unaffected."""
  stats = jnp.stack([jnp.eye(4) * 3e38, jnp.eye(4)])
  roots, errors = shampoo.inverse_pth_root(stats, 4, epsilon=1e-6, relative_epsilon=False)
  assert errors[0] == jnp.inf and bool(jnp.isfinite(errors[1])) and errors[1] < 1e-3


# Blocks of 4 over a ragged matrix and a rank-3 tensor: 12, 2 and 4 statistics in three stacks,
# none a multiple of 8.
PADDED_SHAPES = {'w': (10, 6), 't': (3, 4, 5), 'b': (5,)}
PADDED = {'block_size': 4, 'merge_small_dims_block_size': 1, 'start_preconditioning_step': 1,
          'preconditioning_compute_steps': 2}


def test_stack_multiple_pads_every_stack_with_identities_and_leaves_the_updates_alone():
  """Padded to 8, the stacks hold the same real statistics and the direction is the same at every
  step (graft, momentum, roots refreshed at steps 1, 2 and 4)."""
  grads = random_grads(PADDED_SHAPES, steps=5)
  plain, plain_state = run(grads, **PADDED)
  padded, state = run(grads, stack_multiple=8, **PADDED)
  keys = ('4x4_p4_m0', '4x4_p4_m1', '3x4x4_p6_m0', '3x4x4_p6_m1', '3x4x4_p6_m2')
  assert {k: v.shape[0] for k, v in plain_state.stats.items()} == dict(zip(keys, (6, 6, 2, 2, 2)))
  assert {k: v.shape[0] for k, v in state.stats.items()} == dict.fromkeys(keys, 8)
  assert int(state.root_refreshes) == 3
  for key, stats in state.stats.items():
    real = plain_state.stats[key].shape[0]
    np.testing.assert_allclose(stats[:real], plain_state.stats[key], rtol=1e-6)
    np.testing.assert_array_equal(stats[real:], np.broadcast_to(np.eye(stats.shape[-1]), stats[real:].shape))
    np.testing.assert_array_equal(state.padding[key], np.arange(stats.shape[0]) >= real)
  for a, b in zip(padded, plain):
    for name in PADDED_SHAPES:
      assert_close(a[name], b[name], rtol=1e-6)


def test_stacks_padded_to_the_mesh_shard_over_all_8_devices_and_update_as_on_one():
  mesh = partitioning.make_mesh({'data': 4, 'model': 2}, jax.devices())
  grads = random_grads(PADDED_SHAPES, steps=3)
  params = jax.tree.map(jnp.zeros_like, grads[0])
  replicated = jax.tree.map(lambda _: partitioning.replicated(mesh), params)
  tx = scale_by_shampoo(stack_multiple=8, stack_sharding=partitioning.stack_sharding(mesh), **PADDED)
  shardings = partitioning.optimizer_state_shardings(jax.eval_shape(tx.init, params), params, replicated, mesh)
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  for stack in jax.tree.leaves((state.stats, state.roots)):
    assert stack.shape[0] % 8 == 0
    assert stack.sharding.spec == jax.sharding.PartitionSpec(('data', 'model'))
    assert len({shard.device for shard in stack.addressable_shards}) == 8
  update = jax.jit(tx.update, in_shardings=(replicated, shardings, replicated),
                   out_shardings=(replicated, shardings))
  expected, _ = run(grads, **PADDED)
  for g, want in zip(grads, expected):
    direction, state = update(g, state, params)
    for name in PADDED_SHAPES:
      assert_close(direction[name], want[name], rtol=1e-5)


def test_health_counts_the_real_blocks_only():
  """Every real root rejected (NaN statistics), the identities' accepted: all real roots failed and
  graft-only, not diluted by the padding; the metrics are those of the unpadded stacks."""
  grads = random_grads(PADDED_SHAPES, steps=2)
  params = jax.tree.map(jnp.zeros_like, grads[0])
  tx = scale_by_shampoo(stack_multiple=8, **PADDED)
  update = jax.jit(tx.update)
  _, state = update(grads[0], tx.init(params), params)  # before the start step: no refresh
  poisoned = {k: jnp.where(state.padding[k][:, None, None], s, jnp.nan) for k, s in state.stats.items()}
  _, failing = update(grads[1], state._replace(stats=poisoned), params)
  assert int(failing.root_refreshes) == 1
  assert jax.tree.map(float, shampoo.health(failing)) == {
      'shampoo_failed_roots_total': 18.0, 'shampoo_refresh_failed_share': 1.0, 'shampoo_graft_share': 1.0,
      'shampoo_roots_age': 0.0}
  _, healthy = update(grads[1], state, params)
  _, plain = run(grads, **PADDED)
  assert jax.tree.map(float, shampoo.health(healthy)) == {
      'shampoo_failed_roots_total': 0.0, 'shampoo_refresh_failed_share': 0.0, 'shampoo_graft_share': 0.0,
      'shampoo_roots_age': 0.0}
  for name, value in shampoo.metrics(plain).items():
    assert float(shampoo.metrics(healthy)[name]) == pytest.approx(float(value), rel=1e-5), name


@pytest.mark.parametrize('multiple', [0, 2.0])
def test_a_bad_stack_multiple_is_a_config_error(multiple):
  with pytest.raises(ConfigError, match=rf'^shampoo stack_multiple={multiple} must be a positive integer$'):
    scale_by_shampoo(stack_multiple=multiple)
