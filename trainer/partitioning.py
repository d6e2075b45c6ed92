"""Mesh from config.mesh, and shardings from the task's logical axis names."""

import math
from typing import Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import ConfigError

BATCH_AXIS = 'data'


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Resolves -1 to the remaining devices; the product must equal the device count."""
  shape = dict(mesh_config.items())
  if BATCH_AXIS not in shape:
    raise ConfigError(f'mesh {shape} has no {BATCH_AXIS!r} axis to spread the batch over')
  free = [name for name, size in shape.items() if size == -1]
  if len(free) > 1 or any(size == 0 or size < -1 for size in shape.values()):
    raise ConfigError(f'mesh {shape}: sizes must be positive, with at most one -1')
  fixed = math.prod(size for size in shape.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f'mesh {shape} cannot be laid on {num_devices} devices '
                        f'({num_devices} is not a multiple of {fixed})')
    shape[free[0]] = num_devices // fixed
  if math.prod(shape.values()) != num_devices:
    raise ConfigError(f'mesh {shape} needs {math.prod(shape.values())} devices, '
                      f'but {num_devices} are available')
  return shape


def make_mesh(shape: dict[str, int], devices: Sequence[jax.Device]) -> Mesh:
  return Mesh(np.asarray(devices).reshape(tuple(shape.values())), tuple(shape))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules) -> object:
  """NamedShardings for a tree whose leaves may be Flax logically-partitioned boxes."""
  specs = nn.get_partition_spec(abstract_boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def optimizer_state_shardings(tx: optax.GradientTransformation, abstract_state, param_shardings,
                              mesh: Mesh):
  """Parameter-shaped parts of the state follow their parameter; the rest is replicated."""
  return optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_state, param_shardings,
      transform_non_params=lambda _: replicated(mesh))


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's rows (multi-host ready)."""
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in local_batch.items()}
