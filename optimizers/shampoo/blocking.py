"""Static layouts: how each parameter is merged, cut into blocks and bucketed.

Everything here depends on shapes and hyperparameters only, so it runs at trace time.
Blocks of all parameters are stacked per group (block shape and exponent) into
[n, *block] arrays, with their statistics in [n, b, b] stacks row for row, so that a
statistics update, a root refresh and the preconditioning are one batched op per stack, and
the trainer shards all of them alike over the mesh. Each stack is padded to a multiple of
the devices it is sharded over (zero blocks, identity statistics): a length the device count
does not divide (2385 blocks on 256 devices) would leave the whole stack on every device.
"""

import dataclasses
import itertools
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


def _merge_dims(shape: tuple[int, ...], limit: int) -> tuple[int, ...]:
  """Adjacent dimensions merged left to right while their product stays <= `limit`, 1s dropped: the
  reference's rule (precondition-opt's merge_small_dims; tested), but that a shape of 1s only merges
  to () here (graft only), to [1] there."""
  merged: list[int] = []
  for d in (d for d in shape if d != 1):
    if merged and merged[-1] * d <= limit:
      merged[-1] *= d
    else:
      merged.append(d)
  return tuple(merged)


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one parameter is blocked, and where its blocks sit in their group's stack."""
  shape: tuple[int, ...]
  merged: tuple[int, ...]
  block: tuple[int, ...] = ()
  grid: tuple[int, ...] = ()
  kept: tuple[bool, ...] = ()  # per merged dim: whether it gets statistics (else skipped: one block)
  group: str | None = None     # the stack of blocks of this shape and exponent; None: graft only
  offset: int = 0              # this parameter's first block in that stack

  @property
  def preconditioned(self) -> bool:
    return self.group is not None

  @property
  def num_blocks(self) -> int:
    return math.prod(self.grid)


def group_key(block: tuple[int, ...], kept: tuple[bool, ...], exponent: int) -> str:
  """The name of the stack of blocks of shape `block` whose roots have exponent -1/`exponent`:
  e.g. '1024x1024_p4'; a dimension without statistics is marked 'u' ('30522ux1024_p2')."""
  return 'x'.join(f'{b}' if keep else f'{b}u' for b, keep in zip(block, kept)) + f'_p{exponent}'


def statistic_key(group: str, mode: int) -> str:
  """The name of the stack of statistics of mode `mode` of every block of `group`."""
  return f'{group}_m{mode}'


def _split(key: str) -> tuple[list[str], int, int]:
  group, mode = key.rsplit('_m', 1)
  dims, exponent = group.rsplit('_p', 1)
  return dims.split('x'), int(exponent), int(mode)


def bucket_size(key: str) -> int:
  """The size b of the b x b statistics in the stack `key` (a `statistic_key`)."""
  dims, _, mode = _split(key)
  return int(dims[mode])


def bucket_exponent(key: str) -> int:
  """The p of the -1/p roots of the statistics in the stack `key` (a `statistic_key`)."""
  return _split(key)[1]


class StackSize(NamedTuple):
  """One stack: `real` blocks (or their statistics), then padding up to `padded` rows."""
  real: int
  padded: int

  @property
  def padding(self) -> np.ndarray:
    """[padded] True for the padding rows, which only make the stack's length a multiple."""
    return np.arange(self.padded) >= self.real


class Plan(NamedTuple):
  layouts: list[Layout]           # per parameter
  groups: dict[str, StackSize]    # group -> its stack of blocks
  sizes: dict[str, StackSize]     # statistic key -> its stack of statistics (as long as its group's)
  masks: dict[str, np.ndarray]    # statistic key -> [padded, b]: 1 at coordinates past a ragged edge

  def kept(self, group: str) -> tuple[bool, ...]:
    """Which modes of the group's blocks have statistics."""
    return next(layout.kept for layout in self.layouts if layout.group == group)


def spread(group: str) -> bool:
  """Whether the group's stacks are padded and split over the devices: not for blocks with a
  dimension that gets no statistics (an embedding table, 40M x 128, is one block): padding those
  would add whole tables of zeros, and the table is sharded as a parameter already."""
  return 'u' not in group


def plan(shapes, hp, multiple: int = 1) -> Plan:
  """Every parameter's layout, and the stacks (padded to a multiple of `multiple` where `spread`) it
  puts blocks in.

  The blocks of all parameters with one block shape and exponent form one group, stacked
  [n, *block]; each preconditioned mode of the group has its stack of statistics [n, b, b] row
  for row. So a device holding rows i..j of a group holds their statistics and roots too: it
  updates the statistics, roots and preconditions its blocks without communication.
  """
  layouts, counts, masks = [], {}, {}
  limit = hp['skip_preconditioning_dim_size_gt']
  min_rank = 1 if hp['precondition_rank1'] else 2
  for shape in shapes:
    merged = _merge_dims(tuple(shape), hp['merge_small_dims_block_size'])
    kept = tuple(d <= limit for d in merged)
    if len(shape) < min_rank or not any(kept) or (not all(kept) and not hp['precondition_embeddings']):
      layouts.append(Layout(tuple(shape), merged))
      continue
    block = tuple(min(d, hp['block_size']) if keep else d for d, keep in zip(merged, kept))
    grid = tuple(-(-d // b) for d, b in zip(merged, block))
    group = group_key(block, kept, hp['exponent_override'] or 2 * sum(kept))
    layouts.append(Layout(tuple(shape), merged, block, grid, kept, group, counts.get(group, 0)))
    counts[group] = counts.get(group, 0) + math.prod(grid)
    for i, (d, b, g, keep) in enumerate(zip(merged, block, grid, kept)):
      if keep:  # coordinates past d in the last block along dim i
        along = np.array([index[i] for index in itertools.product(*map(range, grid))])
        valid = np.where(along[:, None] == g - 1, (d - (g - 1) * b), b)
        masks.setdefault(statistic_key(group, i), []).append((np.arange(b)[None, :] >= valid).astype(np.float32))
  groups = {key: StackSize(n, -(-n // multiple) * multiple if spread(key) else n) for key, n in counts.items()}
  sizes = {key: groups[key.rsplit('_m', 1)[0]] for key in masks}
  return Plan(layouts, groups, sizes, {k: np.pad(np.concatenate(v), [(0, sizes[k].padded - sizes[k].real), (0, 0)])
                                       for k, v in masks.items()})


def stack_sizes(shapes, hp, multiple: int = 1) -> dict[str, StackSize]:
  """Per stack of statistics, how many are real and how long the stack is once padded to a
  multiple of `multiple` (the devices it is sharded over): what
  `scale_by_shampoo(stack_multiple=multiple)` allocates for parameters of `shapes`."""
  return plan(shapes, hp, multiple).sizes


def preconditioner_kind(shape: tuple[int, ...], hp: dict) -> str:
  """How `shape` is preconditioned: 'graft' (not at all), 'blocked' (a dimension cut into blocks),
  'whole' (one unblocked statistic per dimension, roots' exponents summing to 1/2: the
  Kronecker-factored setting that theory, e.g. muP's scaling, describes) or 'merged' (other)."""
  layout = plan([shape], hp).layouts[0]
  if not layout.preconditioned:
    return 'graft'
  if layout.block != layout.merged:
    return 'blocked'
  kept = [d for d in shape if d != 1]
  exponent = int(layout.group.rsplit('_p', 1)[1])
  return 'whole' if list(layout.merged) == kept and all(layout.kept) and 2 * len(kept) == exponent else 'merged'


def stack(arrays, p: Plan, constrain=lambda x: x) -> dict[str, jnp.ndarray]:
  """Per group, the blocks of `arrays` (one per parameter, in order) stacked [padded, *block],
  zero padding rows last; `constrain` places each `spread` stack (the trainer: split over the mesh)."""
  parts = {key: [] for key in p.groups}
  for x, layout in zip(arrays, p.layouts):
    if layout.preconditioned:
      parts[layout.group].append(to_blocks(x, layout))
  stacks = {key: jnp.pad(jnp.concatenate(parts[key]), [(0, size.padded - size.real)] + [(0, 0)] * (parts[key][0].ndim - 1))
            for key, size in p.groups.items()}
  return {key: constrain(x) if spread(key) else x for key, x in stacks.items()}


def unstack(stacks: dict[str, jnp.ndarray], layout: Layout):
  """One parameter's array back from its group's stack: the inverse of `stack`."""
  return from_blocks(stacks[layout.group][layout.offset:layout.offset + layout.num_blocks], layout)


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
