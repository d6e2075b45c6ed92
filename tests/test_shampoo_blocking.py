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
  for d, b, slot in zip(layout.merged, layout.block, layout.slots):
    assert b == (d if slot is None else min(d, hp['block_size']))
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


@pytest.mark.parametrize('multiple,padded', [(1, (12, 2, 4)), (8, (16, 8, 8)), (3, (12, 3, 6))])
def test_stack_sizes_pad_each_bucket_to_the_multiple(multiple, padded):
  """The real blocks per bucket, and its length padded to the multiple, as init allocates them; the
  ragged-edge masks cover the padded length, with no padded coordinate in an identity block."""
  shapes = [(10, 6), (3, 4, 5), (5,)]
  hp = {**DEFAULTS, 'block_size': 4, 'merge_small_dims_block_size': 1}
  sizes = shampoo.stack_sizes(shapes, hp, multiple)
  assert sizes == dict(zip(('00004_p4', '00003_p6', '00004_p6'), zip((12, 2, 4), padded)))
  state = shampoo.scale_by_shampoo(stack_multiple=multiple, **hp).init([jnp.zeros(s) for s in shapes])
  assert {k: v.shape[0] for k, v in state.stats.items()} == {k: size.padded for k, size in sizes.items()}
  _, _, masks = blocking.plan(shapes, hp, multiple)
  for key, size in sizes.items():
    assert masks[key].shape == (size.padded, blocking.bucket_size(key))
    assert not masks[key][size.padding].any()
    np.testing.assert_array_equal(size.padding, np.arange(size.padded) >= size.real)
