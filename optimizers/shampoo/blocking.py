"""Static layouts: how each parameter is merged, cut into blocks and bucketed.

Everything here depends on shapes and hyperparameters only, so it runs at trace time.
Statistics of all parameters are stacked per (block size, exponent) bucket into
[n, b, b] arrays, so that a statistics update and a root refresh are one batched op per
bucket, and the trainer can shard the stacks. Each stack is padded with identity blocks to a
multiple of the devices it is sharded over: a length the device count does not divide (2385
blocks on 256 devices) would leave the whole stack on every device.
"""

import dataclasses
import itertools
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


def _merge_dims(shape: tuple[int, ...], limit: int) -> tuple[int, ...]:
  merged: list[int] = []
  for d in (d for d in shape if d != 1):
    if merged and merged[-1] * d <= limit:
      merged[-1] *= d
    else:
      merged.append(d)
  return tuple(merged)


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one parameter is blocked, and where its statistics sit in the bucket stacks."""
  shape: tuple[int, ...]
  merged: tuple[int, ...]
  block: tuple[int, ...] = ()
  grid: tuple[int, ...] = ()
  slots: tuple[tuple[str, int] | None, ...] = ()  # per merged dim: (bucket key, offset); None: skipped

  @property
  def preconditioned(self) -> bool:
    return any(self.slots)

  @property
  def num_blocks(self) -> int:
    return math.prod(self.grid)


def bucket_key(size: int, exponent: int) -> str:
  """The name of the stack of size x size statistics whose roots have exponent -1/`exponent`."""
  return f'{size:05d}_p{exponent}'


def bucket_size(key: str) -> int:
  return int(key.split('_p')[0])


def bucket_exponent(key: str) -> int:
  return int(key.split('_p')[1])


class StackSize(NamedTuple):
  """One bucket's stack: the statistics of `real` blocks, then identity blocks up to `padded` rows."""
  real: int
  padded: int

  @property
  def padding(self) -> np.ndarray:
    """[padded] True for the identity blocks, which only make the stack's length a multiple."""
    return np.arange(self.padded) >= self.real


def plan(shapes, hp, multiple: int = 1) -> tuple[list[Layout], dict[str, StackSize], dict[str, np.ndarray]]:
  """Layouts per parameter, stack sizes (padded to a multiple of `multiple`), and per bucket the
  [padded, b] mask of the coordinates that only pad a ragged block (none in identity blocks)."""
  layouts, counts, masks = [], {}, {}
  limit = hp['skip_preconditioning_dim_size_gt']
  for shape in shapes:
    merged = _merge_dims(tuple(shape), hp['merge_small_dims_block_size'])
    kept = [d <= limit for d in merged]
    if len(shape) <= 1 or not any(kept) or (not all(kept) and not hp['precondition_embeddings']):
      layouts.append(Layout(tuple(shape), merged))
      continue
    block = tuple(min(d, hp['block_size']) if keep else d for d, keep in zip(merged, kept))
    grid = tuple(-(-d // b) for d, b in zip(merged, block))
    exponent = hp['exponent_override'] or 2 * sum(kept)
    slots = []
    for i, (d, b, g, keep) in enumerate(zip(merged, block, grid, kept)):
      if not keep:
        slots.append(None)
        continue
      key = bucket_key(b, exponent)
      slots.append((key, counts.get(key, 0)))
      counts[key] = counts.get(key, 0) + math.prod(grid)
      # Padding rows: in the last block along dim i, coordinates past d.
      along = np.array([index[i] for index in itertools.product(*map(range, grid))])
      valid = np.where(along[:, None] == g - 1, (d - (g - 1) * b), b)
      masks.setdefault(key, []).append((np.arange(b)[None, :] >= valid).astype(np.float32))
    layouts.append(Layout(tuple(shape), merged, block, grid, tuple(slots)))
  sizes = {key: StackSize(n, -(-n // multiple) * multiple) for key, n in counts.items()}
  return layouts, sizes, {k: np.pad(np.concatenate(v), [(0, sizes[k].padded - sizes[k].real), (0, 0)])
                          for k, v in masks.items()}


def stack_sizes(shapes, hp, multiple: int = 1) -> dict[str, StackSize]:
  """Per bucket, how many blocks are real and how long the stack is once padded to a multiple of
  `multiple` (the devices it is sharded over): what `scale_by_shampoo(stack_multiple=multiple)`
  allocates for parameters of `shapes`."""
  return plan(shapes, hp, multiple)[1]


def preconditioner_kind(shape: tuple[int, ...], hp: dict) -> str:
  """How `shape` is preconditioned: 'graft' (not at all), 'blocked' (a dimension cut into blocks),
  'whole' (one unblocked statistic per dimension, roots' exponents summing to 1/2: the
  Kronecker-factored setting that theory, e.g. muP's scaling, describes) or 'merged' (other)."""
  layout = plan([shape], hp)[0][0]
  if not layout.preconditioned:
    return 'graft'
  if layout.block != layout.merged:
    return 'blocked'
  kept = [d for d in shape if d != 1]
  exponent = bucket_exponent(next(slot for slot in layout.slots if slot)[0])
  return 'whole' if list(layout.merged) == kept and all(layout.slots) and 2 * len(kept) == exponent else 'merged'


def to_blocks(x, layout: Layout):
  """[*shape] -> [num_blocks, *block], zero-padding ragged edges."""
  k = len(layout.merged)
  x = x.reshape(layout.merged)
  x = jnp.pad(x, [(0, g * b - d) for d, b, g in zip(layout.merged, layout.block, layout.grid)])
  x = x.reshape([n for g, b in zip(layout.grid, layout.block) for n in (g, b)])
  x = x.transpose(list(range(0, 2 * k, 2)) + list(range(1, 2 * k, 2)))
  return x.reshape((layout.num_blocks,) + layout.block)


def from_blocks(x, layout: Layout):
  """[num_blocks, *block] -> [*shape], dropping the padding: the inverse of `to_blocks`."""
  k = len(layout.merged)
  x = x.reshape(layout.grid + layout.block)
  x = x.transpose([j for i in range(k) for j in (i, k + i)])
  x = x.reshape([g * b for g, b in zip(layout.grid, layout.block)])
  x = x[tuple(slice(0, d) for d in layout.merged)]
  return x.reshape(layout.shape)
