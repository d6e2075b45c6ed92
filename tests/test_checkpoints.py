"""Checkpoints restore arrays by their tree paths, and refuse a state that differs, by name."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from configs import optimizer_defaults
from errors import ConfigError
from optimizers import shampoo
from trainer.checkpoints import Checkpointer


@struct.dataclass
class State:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def make_state(**shapes) -> State:
  """A state over params of `shapes` (default w: (3, 4), b: (4,)) with Adam's NamedTuples."""
  shapes = shapes or {'w': (3, 4), 'b': (4,)}
  params = {name: jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape) / 7
            for name, shape in shapes.items()}
  opt_state = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1)).init(params)
  return State(step=jnp.array(200, jnp.int32), params=params, opt_state=opt_state)


def save(workdir, state, step=200, meta=None):
  checkpointer = Checkpointer(str(workdir), keep=2)
  checkpointer.save(step, state, meta or {'seconds': 1.5})
  checkpointer.close()


def restore(workdir, abstract_state):
  checkpointer = Checkpointer(str(workdir), keep=2)
  try:
    return checkpointer.restore(abstract_state)
  finally:
    checkpointer.close()


def test_round_trip_restores_every_array_into_the_same_tree(tmp_path):
  state = make_state()
  save(tmp_path, state, meta={'seconds': 1.5, 'steps_to_target': None})
  restored, meta = restore(tmp_path, jax.eval_shape(lambda: state))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert isinstance(restored.opt_state[1][0], optax.ScaleByAdamState)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert meta == {'seconds': 1.5, 'steps_to_target': None}
  assert Checkpointer(str(tmp_path), keep=2).last_saved_step == 200


def test_a_key_the_checkpoint_lacks_is_named(tmp_path):
  save(tmp_path, make_state())
  with pytest.raises(ConfigError, match=r"^checkpoint step 200 does not match this run's state: "
                                        r"\.params\['extra'\] is not in the checkpoint$"):
    restore(tmp_path, jax.eval_shape(lambda: make_state(w=(3, 4), b=(4,), extra=(2,))))


def test_a_key_only_the_checkpoint_has_is_named(tmp_path):
  save(tmp_path, make_state(w=(3, 4), b=(4,), extra=(2,)))
  with pytest.raises(ConfigError, match=r"^checkpoint step 200 does not match this run's state: "
                                        r"\S*\['extra'\] is in the checkpoint but not in this "
                                        r"run's state$"):
    restore(tmp_path, jax.eval_shape(make_state))


def test_a_shape_mismatch_names_the_path_and_both_shapes(tmp_path):
  save(tmp_path, make_state())
  with pytest.raises(ConfigError) as error:
    restore(tmp_path, jax.eval_shape(lambda: make_state(w=(3, 5), b=(4,))))
  assert str(error.value) == ("checkpoint step 200 does not match this run's state: "
                              ".params['w'] has shape (3, 4) in the checkpoint, (3, 5) here")


def test_a_dtype_mismatch_names_the_path_and_both_dtypes(tmp_path):
  state = make_state()
  save(tmp_path, state)
  abstract = jax.eval_shape(lambda: state.replace(step=state.step.astype(jnp.int16)))
  with pytest.raises(ConfigError, match=r"^checkpoint step 200 does not match this run's state: "
                                        r"\.step has dtype int32 in the checkpoint, int16 here$"):
    restore(tmp_path, abstract)


def test_a_checkpoint_of_a_bare_list_of_arrays_is_refused_in_one_line(tmp_path):
  state = make_state()
  manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'), item_names=('state', 'meta'),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(200, args=ocp.args.Composite(
      state=ocp.args.StandardSave(jax.tree.leaves(state)), meta=ocp.args.JsonSave({})))
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(ConfigError) as error:
    restore(tmp_path, jax.eval_shape(lambda: state))
  assert str(error.value) == (
      f'{os.path.join(str(tmp_path), "checkpoints", "200")} was written in an older checkpoint '
      'format (a bare list of arrays); it cannot be restored by name: start a new workdir')


def test_sharded_round_trip_on_8_devices_keeps_the_shardings(tmp_path):
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('data', 'model'))
  by_name = {'w': NamedSharding(mesh, P('data', 'model')), 'b': NamedSharding(mesh, P('model'))}
  replicated = NamedSharding(mesh, P())

  def sharding(path, _):
    name = path[-1].key if isinstance(path[-1], jax.tree_util.DictKey) else None
    return by_name.get(name, replicated)

  state = make_state(w=(8, 4), b=(4,))
  shardings = jax.tree_util.tree_map_with_path(sharding, state)
  state = jax.device_put(state, shardings)
  save(tmp_path, state)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, shardings)
  restored, _ = restore(tmp_path, abstract)
  for a, b, s in zip(jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(shardings),
                     strict=True):
    assert a.sharding == s
    np.testing.assert_array_equal(a, b)
  assert restored.params['w'].sharding.spec == P('data', 'model')


def test_shampoo_stacks_padded_for_another_length_are_refused_in_one_line(tmp_path):
  """6 statistics padded to 8 for 8 devices restore on 4 (also 8), not on 2 (6)."""
  hyperparameters = {**optimizer_defaults.BY_NAME['shampoo'], 'block_size': 4, 'merge_small_dims_block_size': 1}
  params = {'w': jnp.zeros((24, 4))}  # 6 blocks of 4 x 4

  def abstract_state(devices):
    tx = shampoo.shampoo(0.1, stack_multiple=devices, **hyperparameters)
    return jax.eval_shape(lambda: State(step=jnp.array(200, jnp.int32), params=params,
                                        opt_state=tx.init(params)))

  save(tmp_path, jax.tree.map(jnp.zeros_like, abstract_state(8)))
  assert restore(tmp_path, abstract_state(4))[0].opt_state[0].stats['4x4_p4_m0'].shape == (8, 4, 4)
  with pytest.raises(ConfigError) as error:
    restore(tmp_path, abstract_state(2))
  assert str(error.value) == (
      "checkpoint step 200 does not match this run's state: .opt_state[0].stats['4x4_p4_m0'] has shape "
      "(8, 4, 4) in the checkpoint, (6, 4, 4) here; Shampoo pads its stacks to a multiple of the device "
      "count: resume on the device count (and blocking settings) that wrote the checkpoint")


def empty_step(workdir, step):
  for folder, _, files in os.walk(workdir / 'checkpoints' / str(step)):
    for name in files:
      os.truncate(os.path.join(folder, name), 0)


def test_an_unreadable_step_is_moved_aside_where_orbax_no_longer_sees_it(tmp_path):
  state = make_state()
  save(tmp_path, state, step=100, meta={'step': 100})
  save(tmp_path, state, step=200, meta={'step': 200})
  empty_step(tmp_path, 200)
  checkpointer = Checkpointer(str(tmp_path), keep=3)
  _, meta = checkpointer.restore(jax.eval_shape(lambda: state))
  assert meta == {'step': 100} and checkpointer.latest_step() == checkpointer.last_saved_step == 100
  checkpointer.save(200, state, {'step': 200})  # the recomputed step lands beside the unreadable one
  checkpointer.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['100', '200', '200.corrupt']
  empty_step(tmp_path, 200)
  assert restore(tmp_path, jax.eval_shape(lambda: state))[1] == {'step': 100}
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['100', '200.corrupt', '200.corrupt2']


def test_a_state_mismatch_is_not_taken_for_an_unreadable_step(tmp_path):
  save(tmp_path, make_state(), step=100)
  save(tmp_path, make_state(), step=200)
  with pytest.raises(ConfigError, match=r"^checkpoint step 200 does not match this run's state: "):
    restore(tmp_path, jax.eval_shape(lambda: make_state(w=(3, 5), b=(4,))))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['100', '200']
