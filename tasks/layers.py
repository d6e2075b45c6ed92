"""Transformer building blocks shared by the translation and BERT tasks (Flax linen).

Every kernel is a 2-D matrix with logical axis names, so
- the trainer can shard heads and feed-forward units over a `model` mesh axis
  (`LOGICAL_AXIS_RULES`: `heads`, `mlp`, `vocab` -> model; `embed` replicated), and
- second-order optimizers see plain matrices: Shampoo keeps one statistic per
  side, kfac-jax recognises every projection as a dense layer.

The vocabulary is padded (`ModelConfig.padded_vocab_size`) so that every shard of
the embedding holds a multiple of 128 rows, whatever real vocabulary the data has;
the padded logits are set to NEG_INF (`mask_vocab_padding`), so no softmax, argmax
or beam gives them any weight.

Packing: several sequences may share a row. `segmentation` numbers them
(1, 2, ...; 0 = padding) and attention never crosses segments; `position`
restarts at 0 in each segment. Layer norm comes before each sub-layer (pre-LN),
which trains stably with every optimizer here without the post-LN warm-up
sensitivity; encoder blocks also take Vaswani et al.'s and BERT's post-LN
(`layer_norm_position='post'`: the norm after the residual sum).

`width_ratio` (width / base_width under muP, else 1) changes what muP changes in
the forward pass: attention logits scale as 1/head_dim rather than 1/sqrt(head_dim)
(at the base width they are equal), the embedding's lookup multiplier and init
stay those of the base width, and tied output logits shrink as 1/width_ratio.
"""

import dataclasses
import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from errors import ConfigError

Dtype = Any
NEG_INF = -1e9
# (logical axis, mesh axis) for the models built from these blocks, first match wins.
LOGICAL_AXIS_RULES = (('batch', 'data'), ('vocab', 'model'), ('heads', 'model'), ('mlp', 'model'),
                      ('embed', None))
VOCAB_ALIGNMENT = 128  # embedding rows per shard are a multiple of this (a TPU lane width)
# Where a block's layer norms sit: before each sub-layer (pre) or after its residual sum (post).
LAYER_NORM_POSITIONS = ('pre', 'post')
# `ModelConfig.remat`: what an encoder or decoder block keeps of its forward pass for the backward pass.
REMAT_POLICIES = {
    'none': None,  # everything (no recomputation): fastest, most memory
    'full': jax.checkpoint_policies.nothing_saveable,  # only the block's inputs: the whole block runs again
    # also the projections' outputs (matmuls without batch dimensions); attention logits, softmax,
    # dropout and activations, the terms quadratic in length or elementwise, are recomputed
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The sizes, dropouts and dtype of a model built from these blocks; each task's config adds its depth."""
  vocab_size: int       # the real vocabulary; the embedding has `padded_vocab_size` rows
  features: int         # model width: d_model, BERT's hidden size
  num_heads: int
  hidden: int           # feed-forward width
  dropout: float
  attention_dropout: float
  dtype: str = 'float32'  # activations; parameters and optimizer state stay float32
  width_ratio: float = 1.0  # width / base_width under muP, else 1
  vocab_shards: int = 1  # the size of the mesh axis the vocabulary is split over
  remat: str = 'none'  # what blocks keep for the backward pass: a REMAT_POLICIES key

  def __post_init__(self):
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f'task.remat={self.remat!r}: choose one of {", ".join(REMAT_POLICIES)}')

  @property
  def padded_vocab_size(self) -> int:
    """The vocabulary rounded up to VOCAB_ALIGNMENT rows per shard, so `vocab_shards` divides it."""
    multiple = VOCAB_ALIGNMENT * self.vocab_shards
    return -(-self.vocab_size // multiple) * multiple


def mask_vocab_padding(logits: jax.Array, vocab_size: int) -> jax.Array:
  """Logits [..., padded vocabulary] with the padding columns at NEG_INF: they never win and take no
  probability mass, so losses, accuracies and beams over the real tokens are those of an unpadded model."""
  real = jnp.arange(logits.shape[-1]) < vocab_size
  return jnp.where(real, logits, NEG_INF)


def check_sizes(features: int, num_heads: int, dtype: str) -> None:
  """Settings every model built from these blocks needs: whole heads, a supported activation dtype."""
  if features % num_heads:
    raise ConfigError(f'model features {features} not divisible by its {num_heads} heads')
  if dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'task.dtype={dtype!r}: choose float32 or bfloat16')


def dense(features: int, axes: tuple[str, str], dtype: Dtype, name: str) -> nn.Dense:
  """A Dense layer whose kernel (and bias) carry logical axis names."""
  init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes)
  return nn.Dense(features, dtype=dtype, name=name, kernel_init=init,
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


def layer_norm(dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


def sinusoidal_positions(position: jax.Array, features: int) -> jax.Array:
  """Vaswani et al.'s fixed encodings at the given (per-segment) positions: [..., features]."""
  half = features // 2
  frequencies = np.exp(-np.log(10_000.0) * np.arange(half) / max(half - 1, 1))
  angles = position[..., None].astype(jnp.float32) * frequencies
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def segment_mask(query_segmentation: jax.Array, key_segmentation: jax.Array) -> jax.Array:
  """[batch, 1, q, k]: True where query and key are real tokens of the same segment."""
  same = query_segmentation[:, :, None] == key_segmentation[:, None, :]
  real = (query_segmentation[:, :, None] > 0) & (key_segmentation[:, None, :] > 0)
  return (same & real)[:, None]


def causal_mask(length: int) -> jax.Array:
  """[1, 1, q, k]: True where the key is not after the query (rows of a packed segment are contiguous)."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


class Embed(nn.Module):
  """Token embedding, scaled by sqrt(features) on lookup; `attend` gives tied output logits.

  Under muP (width_ratio != 1) the lookup scale and init std are the base width's, so
  embedded coordinates keep their size, and `attend` divides by the ratio: the
  read-out of a width-d vector with O(1) coordinates must shrink as 1/d.

  The rows past `vocab_size` (the padding) start at zero and, their logits being masked,
  get no gradient: they stay zero, so no parameter norm, weight decay or preconditioner
  of the real rows sees them.
  """
  vocab_size: int
  num_embeddings: int  # rows: the vocabulary padded (ModelConfig.padded_vocab_size)
  features: int
  dtype: Dtype = jnp.float32
  width_ratio: float = 1.0

  def setup(self):
    normal = nn.initializers.normal(stddev=self._base_features ** -0.5)

    def init(key, shape, dtype=jnp.float32):
      return jnp.where(jnp.arange(shape[0])[:, None] < self.vocab_size, normal(key, shape, dtype), 0)
    self.embedding = self.param('embedding', nn.with_logical_partitioning(init, ('vocab', 'embed')),
                                (self.num_embeddings, self.features))

  @property
  def _base_features(self) -> float:
    return self.features / self.width_ratio

  def __call__(self, ids: jax.Array) -> jax.Array:
    # A Python float is weakly typed: a NumPy scalar would promote a bfloat16 lookup to float32.
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype) * self._base_features ** 0.5

  def attend(self, x: jax.Array) -> jax.Array:
    logits = jnp.einsum('...d,vd->...v', x, self.embedding.astype(self.dtype))
    return logits if self.width_ratio == 1 else logits / self.width_ratio


class MultiHeadAttention(nn.Module):
  """Scaled dot-product attention over `num_heads` heads, with an optional decoding cache.

  With `decode=True` the module attends from one new query token at `decode_position`
  to the keys cached so far; the cache is created by a call without a position, with
  one slot per token of that call's (maximum-length) input.
  """
  num_heads: int
  features: int
  dropout: float
  dtype: Dtype = jnp.float32
  decode: bool = False
  width_ratio: float = 1.0  # muP: logits / head_dim (equal to / sqrt(head_dim) at the base width)

  @nn.compact
  def __call__(self, queries, keys_values, mask, *, deterministic: bool, decode_position=None):
    if self.features % self.num_heads:
      raise ValueError(f'features {self.features} not divisible by num_heads {self.num_heads}')
    head_dim = self.features // self.num_heads
    split = lambda x: x.reshape(x.shape[:-1] + (self.num_heads, head_dim))
    q = split(dense(self.features, ('embed', 'heads'), self.dtype, 'query')(queries))
    k = split(dense(self.features, ('embed', 'heads'), self.dtype, 'key')(keys_values))
    v = split(dense(self.features, ('embed', 'heads'), self.dtype, 'value')(keys_values))
    if self.decode:
      k, v, mask = self._use_cache(k, v, decode_position)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(head_dim * self.width_ratio).astype(self.dtype)
    logits = jnp.where(mask, logits, NEG_INF)
    weights = jax.nn.softmax(logits.astype(jnp.float32)).astype(self.dtype)
    weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(queries.shape[:-1] + (self.features,))
    return dense(self.features, ('heads', 'embed'), self.dtype, 'out')(out)

  def _use_cache(self, k, v, position):
    """Writes this step's key/value at `position`; returns the cache and a mask of filled slots."""
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
    if self.is_initializing() or position is None:  # creating the cache: shapes only
      return k, v, jnp.ones((1, 1, 1, k.shape[1]), bool)
    start = (0, position, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, start)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, start)
    filled = jnp.arange(cached_k.value.shape[1]) <= position
    return cached_k.value, cached_v.value, filled[None, None, None, :]


class FeedForward(nn.Module):
  hidden: int
  features: int
  dropout: float
  dtype: Dtype = jnp.float32
  activation: Callable = nn.relu  # BERT: gelu

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    x = self.activation(dense(self.hidden, ('embed', 'mlp'), self.dtype, 'wi')(x))
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return dense(self.features, ('mlp', 'embed'), self.dtype, 'wo')(x)


def _residual(x, sublayer, norm_name: str, dropout: float, deterministic: bool, dtype: Dtype,
              layer_norm_position: str = 'pre'):
  """One sub-layer with its residual connection (call inside a compact method): pre-LN
  x + dropout(sublayer(layer_norm(x))), or post-LN layer_norm(x + dropout(sublayer(x)))."""
  norm = layer_norm(dtype, norm_name)
  if layer_norm_position == 'post':
    return norm(x + nn.Dropout(dropout)(sublayer(x), deterministic=deterministic))
  y = sublayer(norm(x))
  return x + nn.Dropout(dropout)(y, deterministic=deterministic)


@functools.cache
def rematerialized(block_class, remat: str):
  """`block_class`, or its version that recomputes `forward` in the backward pass keeping only what the
  `remat` policy saves (one class per setting, however often a model is set up). Parameter paths are
  unchanged (checkpoints and optimizer statistics are keyed by them); `deterministic` is static, since
  dropout branches on it in Python."""
  if remat == 'none':
    return block_class
  deterministic = list(inspect.signature(block_class.forward).parameters).index('deterministic')
  return nn.remat(block_class, policy=REMAT_POLICIES[remat], static_argnums=(deterministic,), methods=['forward'])


class _Block(nn.Module):
  """The sizes, dropouts and dtype an encoder or decoder block is built with.

  `__call__` takes `deterministic` by keyword and passes it on positionally to `forward`, the layers
  themselves, so that `rematerialized` can mark it static (jax.checkpoint traces keyword arguments)."""
  num_heads: int
  features: int
  hidden: int
  dropout: float
  attention_dropout: float
  dtype: Dtype = jnp.float32
  width_ratio: float = 1.0


class EncoderBlock(_Block):
  """Self-attention and feed-forward, each with a residual connection and a layer norm before the
  sub-layer (pre) or after the sum (post)."""
  activation: Callable = nn.relu
  layer_norm_position: str = 'pre'  # a LAYER_NORM_POSITIONS entry

  def __call__(self, x, mask, *, deterministic: bool):
    return self.forward(x, mask, deterministic)

  @nn.compact
  def forward(self, x, mask, deterministic: bool):
    sublayer = functools.partial(_residual, dropout=self.dropout, deterministic=deterministic,
                                 dtype=self.dtype, layer_norm_position=self.layer_norm_position)
    attention = MultiHeadAttention(self.num_heads, self.features, self.attention_dropout, self.dtype,
                                   width_ratio=self.width_ratio, name='attention')
    x = sublayer(x, lambda y: attention(y, y, mask, deterministic=deterministic), 'attention_norm')
    mlp = FeedForward(self.hidden, self.features, self.dropout, self.dtype, self.activation, name='mlp')
    return sublayer(x, lambda y: mlp(y, deterministic=deterministic), 'mlp_norm')


class DecoderBlock(_Block):
  """Causal self-attention, attention to the encoder, feed-forward (pre-LN, residual)."""
  decode: bool = False

  def __call__(self, x, encoded, self_mask, cross_mask, *, deterministic: bool, decode_position=None):
    return self.forward(x, encoded, self_mask, cross_mask, deterministic, decode_position)

  @nn.compact
  def forward(self, x, encoded, self_mask, cross_mask, deterministic: bool, decode_position=None):
    sublayer = functools.partial(_residual, dropout=self.dropout, deterministic=deterministic,
                                 dtype=self.dtype)
    attention = MultiHeadAttention(self.num_heads, self.features, self.attention_dropout, self.dtype,
                                   decode=self.decode, width_ratio=self.width_ratio, name='self_attention')
    x = sublayer(x, lambda y: attention(y, y, self_mask, deterministic=deterministic,
                                        decode_position=decode_position), 'self_attention_norm')
    cross = MultiHeadAttention(self.num_heads, self.features, self.attention_dropout, self.dtype,
                               width_ratio=self.width_ratio, name='cross_attention')
    x = sublayer(x, lambda y: cross(y, encoded, cross_mask, deterministic=deterministic),
                 'cross_attention_norm')
    mlp = FeedForward(self.hidden, self.features, self.dropout, self.dtype, name='mlp')
    return sublayer(x, lambda y: mlp(y, deterministic=deterministic), 'mlp_norm')
