"""SOAP (optimizers/soap.py) against a float64 NumPy SOAP, its state padded and sharded like Shampoo's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimizers
from configs import base
from errors import ConfigError
from optimizers import soap
from trainer import partitioning

# A [8, 8] matrix cut into four 4 x 4 blocks; a [6, 12] matrix whose 12 is above max_precond_dim
# (rotated on its rows only, cut 4 + 2: a ragged edge); a bias (plain Adam).
SHAPES = {'w': (8, 8), 'e': (6, 12), 'b': (5,)}
HP = dict(b1=0.9, b2=0.95, shampoo_beta=0.8, eps=1e-8, precondition_frequency=2, max_precond_dim=8, block_size=4,
          merge_small_dims_block_size=1)
STEPS = 6  # bases from step 0 (eigh), refreshed at updates 2 and 4


def random_grads(steps=STEPS, seed=0):
  rng = np.random.default_rng(seed)
  return [{name: rng.standard_normal(shape) for name, shape in SHAPES.items()} for _ in range(steps)]


def run(grads, **kwargs):
  tx = soap.scale_by_soap(**HP, **kwargs)
  params = {name: jnp.zeros(shape) for name, shape in SHAPES.items()}
  state, directions = tx.init(params), []
  update = jax.jit(tx.update)
  for g in grads:
    direction, state = update(jax.tree.map(jnp.float32, g), state)
    directions.append(direction)
  return directions, state


class NumpyBlock:
  """SOAP on one block (a matrix, or a vector for Adam), float64, as the paper and its reference
  state it; `sides`: which of the two dimensions get a statistic."""

  def __init__(self, shape, sides):
    self.sides = sides
    self.stats = [np.zeros((d, d)) if keep else None for d, keep in zip(shape, sides)]
    self.bases = [None] * len(shape)
    self.m, self.v, self.t = np.zeros(shape), np.zeros(shape), 0

  def rotate(self, x, back=False):
    for mode, q in enumerate(self.bases):
      if q is not None:
        x = np.moveaxis(np.tensordot(q if back else q.T, x, axes=(1, mode)), 0, mode)
    return x

  def step(self, g):
    if self.t == 0:  # the first step only sets the bases: no move, for every parameter
      self.fold(g)
      self.bases = [None if s is None else np.linalg.eigh(s)[1][:, ::-1] for s in self.stats]
      self.t = 1
      return np.zeros_like(g)
    b1, b2 = HP['b1'], HP['b2']
    rotated = self.rotate(g)
    self.m = b1 * self.m + (1 - b1) * rotated
    self.v = b2 * self.v + (1 - b2) * rotated ** 2
    direction = np.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t) * self.rotate(
        self.m / (np.sqrt(self.v) + HP['eps']), back=True)
    self.fold(g)
    if any(self.sides) and self.t % HP['precondition_frequency'] == 0:
      original = self.rotate(self.m, back=True)
      for mode, (s, q) in enumerate(zip(self.stats, self.bases)):
        if s is not None:
          order = np.argsort(-np.diag(q.T @ s @ q), kind='stable')
          self.v = np.take(self.v, order, axis=mode)
          self.bases[mode] = np.linalg.qr(s @ q[:, order])[0]
      self.m = self.rotate(original)
    self.t += 1
    return direction

  def fold(self, g):
    beta = HP['shampoo_beta']
    for mode, s in enumerate(self.stats):
      if s is not None:
        other = np.moveaxis(g, mode, 0).reshape(g.shape[mode], -1)
        self.stats[mode] = beta * s + (1 - beta) * other @ other.T


def numpy_soap(grads):
  """The directions of every step: each block of a parameter its own NumpyBlock."""
  cuts = {'w': ([0, 4, 8], [0, 4, 8]), 'e': ([0, 4, 6], [0, 12])}
  blocks = {name: {(r, c): NumpyBlock((r1 - r, c1 - c), (True, name == 'w'))
                   for r, r1 in zip(rows, rows[1:]) for c, c1 in zip(cols, cols[1:])}
            for name, (rows, cols) in cuts.items()}
  bias = NumpyBlock(SHAPES['b'], (False,))
  directions = []
  for g in grads:
    out = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    for name, per_block in blocks.items():
      for (r, c), block in per_block.items():
        rows, cols = block.m.shape
        out[name][r:r + rows, c:c + cols] = block.step(g[name][r:r + rows, c:c + cols])
    out['b'] = bias.step(g['b'])
    directions.append(out)
  return directions


def test_directions_match_a_float64_numpy_soap():
  """Blocks, a one-sided ragged matrix and a bias, over the first step (no move), two refreshes
  and the updates between them."""
  grads = random_grads()
  ours, state = run(grads)
  assert set(state.stats) == {'4x4_p4_m0', '4x4_p4_m1', '4x12u_p2_m0'}
  for step, (got, want) in enumerate(zip(ours, numpy_soap(grads))):
    for name in SHAPES:
      np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-5, err_msg=f'{name} at step {step}')
  assert not np.asarray(ours[0]['w']).any() and np.asarray(ours[1]['w']).any()


def test_state_is_padded_and_sharded_like_shampoos_and_updates_as_unpadded():
  """Stacks padded to 8 (identity statistics and bases, zero moments in the padding rows), split
  over the 8 devices of a 4 x 2 mesh, give the unpadded directions; the one-sided group is neither
  padded nor spread."""
  mesh = partitioning.make_mesh({'data': 4, 'model': 2}, jax.devices())
  grads = random_grads(steps=5)
  params = {name: jnp.zeros(shape) for name, shape in SHAPES.items()}
  replicated = jax.tree.map(lambda _: partitioning.replicated(mesh), params)
  tx = soap.scale_by_soap(**HP, stack_multiple=8, stack_sharding=partitioning.stack_sharding(mesh))
  shardings = partitioning.optimizer_state_shardings(jax.eval_shape(tx.init, params), params, replicated, mesh)
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  assert {k: v.shape for k, v in state.mu.items()} == {'4x4_p4': (8, 4, 4), '4x12u_p2': (2, 4, 12)}
  for stack in (state.stats['4x4_p4_m0'], state.bases['4x4_p4_m1'], state.mu['4x4_p4'], state.nu['4x4_p4']):
    assert stack.sharding.spec == jax.sharding.PartitionSpec(('data', 'model'))
    assert len({shard.device for shard in stack.addressable_shards}) == 8
  np.testing.assert_array_equal(state.stats['4x4_p4_m0'][4:], np.broadcast_to(np.eye(4), (4, 4, 4)))
  assert state.adam_mu['w'] is None and state.adam_mu['b'].sharding == replicated['b']
  update = jax.jit(tx.update, in_shardings=(replicated, shardings), out_shardings=(replicated, shardings))
  expected, _ = run(grads)
  for g, want in zip(grads, expected):
    direction, state = update(jax.tree.map(jnp.float32, g), state)
    for name in SHAPES:
      np.testing.assert_allclose(direction[name], want[name], rtol=1e-5, atol=1e-6)
  assert not np.asarray(state.mu['4x4_p4'][4:]).any() and not np.asarray(state.nu['4x4_p4'][4:]).any()


def test_registry_soap_steps_with_decoupled_weight_decay():
  """Through optimizers.build: -lr x (SOAP direction + decay x weight), the bias undecayed."""
  params = {name: jnp.ones(shape) for name, shape in SHAPES.items()}
  grads = random_grads(steps=2)
  cfg = base.optimizer('soap', learning_rate=0.1, weight_decay=0.5, **HP)
  tx = optimizers.build(cfg, optax.constant_schedule(0.1))
  state, update = tx.init(params), jax.jit(tx.update)
  directions, _ = run(grads)
  for g, direction in zip(grads, directions):
    updates, state = update(jax.tree.map(jnp.float32, g), state, params)
    np.testing.assert_allclose(updates['w'], -0.1 * (direction['w'] + 0.5), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(updates['b'], -0.1 * direction['b'], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('field,value', [
    ('b1', 1.0), ('b2', -0.1), ('shampoo_beta', 1.5), ('eps', float('nan')), ('precondition_frequency', 0),
    ('max_precond_dim', 0), ('block_size', 0), ('merge_small_dims_block_size', 0),
])
def test_a_bad_field_is_a_config_error(field, value):
  with pytest.raises(ConfigError, match=rf'^optimizer\.{field}=\S+ (is outside|must be a finite)'):
    optimizers.build(base.optimizer('soap', **{field: value}), optax.constant_schedule(0.1))


def test_ragged_coordinates_keep_their_unit_basis_vectors_last_where_the_real_statistic_is_singular():
  """A [7, 2] matrix in blocks of 4 x 2: the second block has 3 real rows, whose 3 x 3 statistic has
  rank 2 after one gradient. Its padded row keeps a unit basis vector in the last column through the
  first eigh and the power steps after it, so the real rows rotate among themselves."""
  tx = soap.scale_by_soap(**{**HP, 'precondition_frequency': 1})
  update = jax.jit(tx.update)
  state = tx.init({'m': jnp.zeros((7, 2))})
  rng = np.random.default_rng(1)
  for _ in range(3):
    _, state = update({'m': jnp.asarray(rng.standard_normal((7, 2)), jnp.float32)}, state)
    basis = np.asarray(state.bases['4x2_p4_m0'][1])
    np.testing.assert_array_equal(np.abs(basis[:, 3]), [0, 0, 0, 1])
    np.testing.assert_array_equal(basis[3, :3], 0)
