"""Shampoo's static layouts (optimizers/shampoo/blocking.py): blocks hold the parameter exactly."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import optimizer_defaults
from optimizers import shampoo
from optimizers.shampoo import blocking

DEFAULTS = optimizer_defaults.BY_NAME['shampoo']

EMBEDDINGS = dict(block_size=4, skip_preconditioning_dim_size_gt=20, precondition_embeddings=True,
                  merge_small_dims_block_size=1)


@pytest.mark.parametrize('shape,overrides', [
    ((3, 3, 64, 64), dict()),                                           # merged to [576, 64]
    ((3, 3, 4, 6), dict(merge_small_dims_block_size=1, block_size=2)),  # every dim cut
    ((1, 7, 1), dict(block_size=4)),                                    # rank 1 once 1s are dropped
    ((2, 3), dict(merge_small_dims_block_size=6, block_size=4)),        # rank 1 once merged
    ((8, 10), dict(block_size=4)),
    ((40, 6), EMBEDDINGS),                                              # skipped dim 0: one block
    ((6, 30, 3), EMBEDDINGS),                                           # skipped dim between kept ones
], ids=['conv_merged', 'conv_blocked', 'squeezed', 'merged', 'ragged', 'embedding', 'skipped_middle'])
def test_to_blocks_then_from_blocks_gives_back_the_parameter(shape, overrides):
  """Exact round trip, with the ragged edges padded by zeros and a skipped dim never cut."""
  hp = {**DEFAULTS, **overrides}
  layout = blocking.plan([shape], hp)[0][0]
  assert layout.preconditioned
  for d, b, keep in zip(layout.merged, layout.block, layout.kept):
    assert b == (min(d, hp['block_size']) if keep else d)
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
  blocks = blocking.to_blocks(x, layout)
  assert blocks.shape == (layout.num_blocks,) + layout.block
  assert np.count_nonzero(blocks) == x.size  # every entry once, the padding zeros
  np.testing.assert_array_equal(blocking.from_blocks(blocks, layout), x)


@pytest.mark.parametrize('shape', [(5,), (1, 1), (5000, 8)])
def test_rank1_and_oversized_params_are_not_blocked(shape):
  """Biases, all-1 shapes and a dim above skip_preconditioning_dim_size_gt: graft only, no layout."""
  layout = blocking.plan([shape], DEFAULTS)[0][0]
  assert not layout.preconditioned and shampoo.preconditioner_kind(shape, DEFAULTS) == 'graft'


@pytest.mark.parametrize('multiple,padded', [(1, (6, 2)), (8, (8, 8)), (3, (6, 3))])
def test_stack_sizes_pad_each_group_to_the_multiple(multiple, padded):
  """A group per block shape and exponent, a statistics stack per mode of it as long as the group,
  padded to the multiple, as init allocates them; the ragged-edge masks cover the padded length,
  with no padded coordinate in an identity matrix."""
  shapes = [(10, 6), (3, 4, 5), (5,)]  # 3 x 2 blocks of 4 x 4; 2 blocks of 3 x 4 x 4; graft only
  hp = {**DEFAULTS, 'block_size': 4, 'merge_small_dims_block_size': 1}
  p = blocking.plan(shapes, hp, multiple)
  assert p.groups == {'4x4_p4': (6, padded[0]), '3x4x4_p6': (2, padded[1])}
  assert [(layout.group, layout.offset) for layout in p.layouts] == [('4x4_p4', 0), ('3x4x4_p6', 0), (None, 0)]
  sizes = shampoo.stack_sizes(shapes, hp, multiple)
  assert sizes == {'4x4_p4_m0': p.groups['4x4_p4'], '4x4_p4_m1': p.groups['4x4_p4'],
                   '3x4x4_p6_m0': p.groups['3x4x4_p6'], '3x4x4_p6_m1': p.groups['3x4x4_p6'],
                   '3x4x4_p6_m2': p.groups['3x4x4_p6']}
  state = shampoo.scale_by_shampoo(stack_multiple=multiple, **hp).init([jnp.zeros(s) for s in shapes])
  assert {k: v.shape for k, v in state.stats.items()} == {
      k: (size.padded, blocking.bucket_size(k), blocking.bucket_size(k)) for k, size in sizes.items()}
  assert [blocking.bucket_size(k) for k in sorted(sizes)] == [3, 4, 4, 4, 4]
  for key, size in sizes.items():
    assert p.masks[key].shape == (size.padded, blocking.bucket_size(key))
    assert not p.masks[key][size.padding].any()
    np.testing.assert_array_equal(size.padding, np.arange(size.padded) >= size.real)


def test_stack_then_unstack_gives_back_every_parameter():
  """Blocks of all parameters of a group share one stack, zero rows pad it; unstacking each
  parameter from it is exact."""
  shapes = [(10, 6), (8, 8), (3, 4, 5), (5,)]
  hp = {**DEFAULTS, 'block_size': 4, 'merge_small_dims_block_size': 1}
  p = blocking.plan(shapes, hp, 8)
  rng = np.random.default_rng(0)
  arrays = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  stacks = blocking.stack(arrays, p)
  assert {k: v.shape for k, v in stacks.items()} == {'4x4_p4': (16, 4, 4), '3x4x4_p6': (8, 3, 4, 4)}
  assert not np.asarray(stacks['4x4_p4'][10:]).any()  # 6 + 4 real blocks, then padding
  for x, layout in zip(arrays[:3], p.layouts):
    np.testing.assert_array_equal(blocking.unstack(stacks, layout), x)


def test_blocks_of_a_table_without_row_statistics_are_neither_padded_nor_spread():
  """A [40, 6] table (rows above the limit) is one block: padding its group to the device count
  would add whole tables of zeros, so only the groups of fully preconditioned blocks are padded."""
  p = blocking.plan([(40, 6), (6, 6)], {**DEFAULTS, **EMBEDDINGS}, multiple=8)
  assert p.groups == {'40ux4_p2': (2, 2), '4x4_p4': (4, 8)}
  assert not blocking.spread('40ux4_p2') and blocking.spread('4x4_p4')
  assert p.sizes['40ux4_p2_m1'] == (2, 2)
