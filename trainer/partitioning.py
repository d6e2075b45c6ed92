"""Mesh from config.mesh, and shardings from the task's logical axis names."""

import itertools
import math
from typing import Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from errors import ConfigError

BATCH_AXIS = 'data'


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
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


def make_mesh(axes, devices: Sequence[jax.Device]) -> Mesh:
  """The Mesh of `axes` (config.mesh: axis name -> size, -1 for the remaining devices) over `devices`."""
  shape = mesh_shape(axes, len(devices))
  return Mesh(np.asarray(devices).reshape(tuple(shape.values())), tuple(shape))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def stack_sharding(mesh: Mesh) -> NamedSharding:
  """A stack's first dimension over every mesh axis together: how Shampoo's stacks of blocks,
  statistics and roots are split, each device holding the same rows of all three."""
  return NamedSharding(mesh, PartitionSpec(mesh.axis_names))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules) -> object:
  """NamedShardings for a tree whose leaves may be Flax logically-partitioned boxes.

  A leaf the mesh cannot split evenly is one ConfigError naming it, raised here (before the
  workdir is written) rather than as an XLA error when the first array is placed.
  """
  specs = nn.get_partition_spec(abstract_boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  jax.tree_util.tree_map_with_path(_check_divisible, nn.unbox(abstract_boxed_tree), shardings)
  return shardings


def _check_divisible(path, leaf, sharding: NamedSharding) -> None:
  """Refuses a leaf with a dimension that the mesh axes it is sharded over do not divide."""
  # A parameter's name is its dict keys ('encoder/block_0/mlp/wi/kernel'); the index of the
  # (params, model_state) pair is left out.
  name = '/'.join(str(key.key) for key in path if isinstance(key, jax.tree_util.DictKey))
  for dim, axes in enumerate(sharding.spec):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    size = math.prod(sharding.mesh.shape[axis] for axis in axes)
    if leaf.shape[dim] % size:
      raise ConfigError(f'parameter {name} of shape {tuple(leaf.shape)} cannot be sharded: its dimension '
                        f'{dim} ({leaf.shape[dim]}) is not a multiple of mesh axis '
                        f'{" x ".join(map(repr, axes))} (size {size}); change the model size or the mesh')


def optimizer_state_shardings(abstract_state, abstract_params, param_shardings, mesh: Mesh):
  """Shardings for any optimizer's state, from where its leaves sit.

  A leaf whose path ends with a parameter's path and has that parameter's shape (Adam's
  moments, momentum, graft accumulators) follows the parameter. A leaf elsewhere with the
  shape of parameters that all share one sharding, which splits them, follows them too (kfac-jax's diagonal
  blocks: a 24B-parameter embedding's curvature split like the embedding, not copied to
  every device). A stack of blocks (rank >= 3: Shampoo's statistics and roots) is spread
  over all mesh axes together when the mesh size divides its length, which Shampoo's
  padding to a multiple of the device count guarantees, so each device updates and roots
  its share; another stack over the mesh axes whose combined size divides its length, as
  many devices as possible. A square matrix (K-FAC's Kronecker factors and their inverses)
  has its rows spread the same way. Everything else (counters, per-block root errors and
  flags, a factor whose size no mesh axis divides) is replicated.
  """
  params = [(jax.tree_util.keystr(path), leaf.shape, sharding) for (path, leaf), sharding in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(param_shardings))]
  params.sort(key=lambda p: -len(p[0]))  # longest (most specific) path first
  axis_sets = [axes for r in range(len(mesh.axis_names), 0, -1)
               for axes in itertools.combinations(mesh.axis_names, r)]
  # Most devices first; among equals all axes together, whose set comes first and the sort keeps.
  axis_sets.sort(key=lambda axes: -math.prod(mesh.shape[a] for a in axes))

  # Shapes whose parameters all share one sharding that splits them.
  by_shape = {}
  for _, shape, sharding in params:
    by_shape.setdefault(shape, set()).add(sharding)
  split_shapes = {shape: next(iter(s)) for shape, s in by_shape.items()
                  if len(s) == 1 and not next(iter(s)).is_fully_replicated}

  def choose(path, leaf):
    key = jax.tree_util.keystr(path)
    for param_path, shape, sharding in params:
      if key.endswith(param_path) and leaf.shape == shape:
        return sharding
    if leaf.shape in split_shapes:
      return split_shapes[leaf.shape]
    if leaf.ndim >= 3 or (leaf.ndim == 2 and leaf.shape[0] == leaf.shape[1]):
      for axes in axis_sets:
        size = math.prod(mesh.shape[a] for a in axes)
        if size > 1 and leaf.shape[0] % size == 0:
          return NamedSharding(mesh, PartitionSpec(axes))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(choose, abstract_state)


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's rows (multi-host ready)."""
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in local_batch.items()}


def to_host(array: jax.Array) -> np.ndarray:
  """The whole (global) array on every process, also when other hosts hold parts of it."""
  if array.is_fully_addressable:
    return np.asarray(jax.device_get(array))
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))
