import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from configs import optimizer_defaults
from errors import ConfigError
from optimizers import shampoo
from trainer import partitioning

SHAMPOO = optimizer_defaults.BY_NAME['shampoo']


def shape(**axes):
  return partitioning.mesh_shape(ml_collections.ConfigDict(axes), 8)


def test_mesh_shape_fills_the_free_axis():
  assert shape(data=-1, model=2) == {'data': 4, 'model': 2}
  assert shape(data=8, model=1) == {'data': 8, 'model': 1}


@pytest.mark.parametrize('axes,message', [
    (dict(data=4, model=3), 'needs 12 devices, but 8'),
    (dict(data=-1, model=3), 'not a multiple of 3'),
    (dict(data=-1, model=-1), 'at most one -1'),
    (dict(model=8), "no 'data' axis"),
])
def test_bad_mesh_shapes(axes, message):
  with pytest.raises(ConfigError, match=message):
    shape(**axes)


def test_mesh_uses_the_given_devices_in_axis_order():
  mesh = partitioning.make_mesh({'data': 4, 'model': 2}, jax.devices())
  assert mesh.axis_names == ('data', 'model') and mesh.devices.shape == (4, 2)


def test_optimizer_state_follows_params_and_spreads_block_stacks():
  mesh = partitioning.make_mesh({'data': 4, 'model': 2}, jax.devices())
  params = {'w': jnp.zeros((16, 16)), 'b': jnp.zeros(16)}
  param_shardings = {'w': NamedSharding(mesh, PartitionSpec(None, 'model')),
                     'b': partitioning.replicated(mesh)}

  def shardings_of(tx):
    state = jax.eval_shape(tx.init, params)
    shardings = partitioning.optimizer_state_shardings(state, params, param_shardings, mesh)
    return {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}

  for tx in (optax.adam(0.1), shampoo.shampoo(0.1, **{**SHAMPOO, 'block_size': 4})):
    moments = [s for k, s in shardings_of(tx).items() if k.endswith("['w']")]
    assert moments and all(s == param_shardings['w'] for s in moments)
  # 16 blocks x 2 statistics = 32 per stack: spread over all 8 devices.
  stacks = [s for k, s in shardings_of(shampoo.shampoo(0.1, **{**SHAMPOO, 'block_size': 4})).items()
            if '.stats[' in k or '.roots[' in k]
  assert stacks and all(s.spec == PartitionSpec(('data', 'model')) for s in stacks)


def test_a_stack_spreads_over_the_largest_axis_set_that_divides_it():
  mesh = partitioning.make_mesh({'data': 4, 'model': 2}, jax.devices())
  specs = {n: partitioning.optimizer_state_shardings(
      jax.ShapeDtypeStruct((n, 8, 8), 'float32'), {}, {}, mesh).spec for n in (16, 12, 6, 3)}
  assert specs == {16: PartitionSpec(('data', 'model')), 12: PartitionSpec(('data',)),
                   6: PartitionSpec(('model',)), 3: PartitionSpec()}


def test_kfac_state_follows_the_parameters_it_has_the_shape_of_and_spreads_square_factors():
  """kfac-jax's diagonal blocks hold state of their parameters' shapes under paths of their own; its
  Kronecker factors and inverses are square matrices."""
  mesh = partitioning.make_mesh({'data': 4, 'model': 2}, jax.devices())
  rows, columns = NamedSharding(mesh, PartitionSpec('data', None)), NamedSharding(mesh, PartitionSpec(None, 'model'))
  params = {'table': jnp.zeros((64, 8)), 'w': jnp.zeros((8, 16)), 'v': jnp.zeros((8, 16)), 'b': jnp.zeros(16)}
  param_shardings = {'table': rows, 'w': columns, 'v': rows, 'b': partitioning.replicated(mesh)}
  state = {'blocks': [{'diagonal': jnp.zeros((64, 8))}, {'diagonal': jnp.zeros((8, 16))}],
           'factors': [jnp.zeros((16, 16)), jnp.zeros((9, 9)), jnp.zeros((12, 12))], 'count': jnp.zeros(())}
  shardings = partitioning.optimizer_state_shardings(state, params, param_shardings, mesh)
  assert shardings['blocks'][0]['diagonal'] == rows
  assert shardings['blocks'][1]['diagonal'].is_fully_replicated  # 'w' and 'v' are split differently
  assert [s.spec for s in shardings['factors']] == [
      PartitionSpec(('data', 'model')), PartitionSpec(), PartitionSpec(('data',))]
  assert shardings['count'].is_fully_replicated


@pytest.mark.parametrize('axes', [{'data': 4, 'model': 2}, {'data': 8, 'model': 1}, {'data': 1, 'model': 8}])
def test_shampoo_stacks_padded_to_the_device_count_spread_over_the_whole_mesh(axes):
  """Stacks of 6 and 2 statistics (a group of 6 blocks of 4 x 4, one of 2 of 3 x 4 x 4), each padded
  to 8 for statistics and roots: every stack on all 8 devices."""
  mesh = partitioning.make_mesh(axes, jax.devices())
  params = {'w': jnp.zeros((10, 6)), 't': jnp.zeros((3, 4, 5))}
  hyperparameters = {**SHAMPOO, 'block_size': 4, 'merge_small_dims_block_size': 1}
  tx = shampoo.shampoo(0.1, stack_multiple=mesh.size, **hyperparameters)
  state = jax.eval_shape(tx.init, params)
  replicated = {name: partitioning.replicated(mesh) for name in params}
  shardings = partitioning.optimizer_state_shardings(state, params, replicated, mesh)
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  stacks = [(leaf.shape[0], sharding) for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings))
            if leaf.ndim == 3 and shampoo.is_stack(jax.tree_util.keystr(path))]
  assert sorted(length for length, _ in stacks) == [8] * 10
  assert all(sharding.spec == PartitionSpec(('data', 'model')) for _, sharding in stacks)


def boxed(shape, names):
  return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32), names)


RULES = (('heads', 'model'), ('vocab', ('data', 'model')), ('embed', None))


def test_logical_shardings_split_what_divides():
  mesh = partitioning.make_mesh({'data': 2, 'model': 4}, jax.devices())
  tree = ({'attention': {'kernel': boxed((16, 36), ('embed', 'heads'))},
           'embedding': boxed((24, 16), ('vocab', 'embed')),
           'scale': jax.ShapeDtypeStruct((3,), jnp.float32)}, {})
  params, _ = partitioning.logical_shardings(tree, mesh, RULES)
  assert params['attention']['kernel'].spec == PartitionSpec(None, 'model')
  assert params['embedding'].spec == PartitionSpec(('data', 'model'), None)
  assert params['scale'].spec == PartitionSpec()


@pytest.mark.parametrize('leaf,message', [
    (boxed((16, 36), ('embed', 'heads')),
     r"parameter block_0/attention/kernel of shape \(16, 36\) cannot be sharded: its dimension 1 \(36\) "
     r"is not a multiple of mesh axis 'model' \(size 8\)"),
    (boxed((20, 16), ('vocab', 'embed')),
     r"block_0/attention/kernel of shape \(20, 16\).*dimension 0 \(20\).*'data' x 'model' \(size 8\)"),
])
def test_a_shape_the_mesh_cannot_split_is_one_config_error(leaf, message):
  mesh = partitioning.make_mesh({'data': 1, 'model': 8}, jax.devices())
  tree = ({'block_0': {'attention': {'kernel': leaf}}}, {})
  with pytest.raises(ConfigError, match=message):
    partitioning.logical_shardings(tree, mesh, RULES)
