"""BERT pre-training: masked language modelling, optionally with next-sentence prediction.

Devlin et al. 2019; the paper's BERT-Large benchmark (Anil et al. 2020, Sec. 6), whose
baseline optimizer is LAMB (You et al. 2020). The encoder reuses the Transformer task's
blocks (`tasks/layers.py`: attention and GELU feed-forward, every kernel a 2-D matrix
with logical axis names) under learned position and segment embeddings and their layer
norm. `task.layer_norm` places each block's norms: `post`, BERT's own (the norm after
each residual sum, no final norm), or `pre` (before each sub-layer, plus a final norm).
The masked-LM head (dense + GELU + layer norm) projects onto the token embedding (tied)
plus a bias; the next-sentence head classifies the pooled [CLS] vector.

Evaluation over the held-out split: `mlm_accuracy` and `mlm_loss` over the masked
positions (MLPerf's target metric is the masked-LM accuracy), `nsp_accuracy` and
`nsp_loss` when next-sentence prediction is on, and `loss`, their sum as trained.

Data: the original BERT / MLPerf TFRecord format (`data/bert_pretraining.py`); with
`task.generate=True` a synthetic corpus goes through the same preparation script first
(`data/synthetic_text.py`), so tiny runs read what a real run reads.
"""

import dataclasses
import os

import flax.linen as nn
import jax.numpy as jnp
import optax

from errors import ConfigError
from data import batches, bert_pretraining, synthetic_text
from tasks import layers, losses
from tasks.base import Task, abstract_global_batch, mesh_axis_size, preset_fields, width_ratio


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(layers.ModelConfig):
  layers: int
  max_positions: int
  next_sentence: bool
  layer_norm: str = 'pre'  # where each block's layer norms sit: a layers.LAYER_NORM_POSITIONS entry

  def __post_init__(self):
    super().__post_init__()
    if self.layer_norm not in layers.LAYER_NORM_POSITIONS:
      raise ConfigError(f'task.layer_norm={self.layer_norm!r}: choose one of {", ".join(layers.LAYER_NORM_POSITIONS)}')


# Devlin et al. 2019, Sec. 3: Base 12 layers / 768 / 12 heads, Large 24 / 1024 / 16; `tiny` for CPU.
MODELS = {
    'tiny': dict(features=64, num_heads=4, hidden=256, layers=2, dropout=0.0, attention_dropout=0.0),
    'base': dict(features=768, num_heads=12, hidden=3072, layers=12, dropout=0.1, attention_dropout=0.1),
    'large': dict(features=1024, num_heads=16, hidden=4096, layers=24, dropout=0.1, attention_dropout=0.1),
}
NUM_SEGMENTS = 2


def model_config(config) -> ModelConfig:
  """The preset `task.model`, with any task field set explicitly (>= 0 dropouts, > 0 sizes) overriding it."""
  task = config.task
  fields = preset_fields(task, MODELS)
  return ModelConfig(vocab_size=task.vocab_size, max_positions=task.max_seq_length,
                     next_sentence=task.next_sentence, layer_norm=task.layer_norm, dtype=task.dtype,
                     remat=task.remat,
                     width_ratio=width_ratio(config, fields['features']),
                     vocab_shards=mesh_axis_size(config, layers.LOGICAL_AXIS_RULES, 'vocab'), **fields)


class Bert(nn.Module):
  config: ModelConfig

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    init = nn.initializers.normal(stddev=0.02)
    self.embed = layers.Embed(c.vocab_size, c.padded_vocab_size, c.features, dtype, c.width_ratio)
    self.position_embedding = self.param(
        'position_embedding', nn.with_logical_partitioning(init, (None, 'embed')), (c.max_positions, c.features))
    self.segment_embedding = self.param(
        'segment_embedding', nn.with_logical_partitioning(init, (None, 'embed')), (NUM_SEGMENTS, c.features))
    self.embed_norm = layers.layer_norm(dtype)
    self.dropout = nn.Dropout(c.dropout)
    block = layers.rematerialized(layers.EncoderBlock, c.remat)
    self.blocks = [block(c.num_heads, c.features, c.hidden, c.dropout, c.attention_dropout, dtype,
                         activation=nn.gelu, width_ratio=c.width_ratio, layer_norm_position=c.layer_norm)
                   for _ in range(c.layers)]
    if c.layer_norm == 'pre':  # post-LN blocks already end in a norm
      self.final_norm = layers.layer_norm(dtype)
    self.mlm_transform = layers.dense(c.features, ('embed', 'mlp'), dtype, 'mlm_transform')
    self.mlm_norm = layers.layer_norm(dtype)
    self.mlm_bias = self.param('mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                               (c.padded_vocab_size,))
    if c.next_sentence:
      self.pooler = layers.dense(c.features, ('embed', 'mlp'), dtype, 'pooler')
      self.nsp_classifier = layers.dense(2, ('mlp', None), dtype, 'nsp_classifier')

  def __call__(self, batch, *, deterministic: bool):
    """(masked-LM logits [batch, predictions, padded vocab], next-sentence logits [batch, 2] or None)."""
    ids = batch['input_ids']
    x = (self.embed(ids) + self.position_embedding[:ids.shape[1]].astype(self.embed.dtype)
         + jnp.take(self.segment_embedding, batch['segment_ids'], axis=0).astype(self.embed.dtype))
    x = self.dropout(self.embed_norm(x), deterministic=deterministic)
    mask = layers.segment_mask(batch['input_mask'], batch['input_mask'])  # real tokens attend to real tokens
    for block in self.blocks:
      x = block(x, mask, deterministic=deterministic)
    if self.config.layer_norm == 'pre':
      x = self.final_norm(x)
    masked = jnp.take_along_axis(x, batch['masked_lm_positions'][..., None], axis=1)
    masked = self.mlm_norm(nn.gelu(self.mlm_transform(masked)))
    mlm_logits = layers.mask_vocab_padding((self.embed.attend(masked) + self.mlm_bias).astype(jnp.float32),
                                           self.config.vocab_size)
    if not self.config.next_sentence:
      return mlm_logits, None
    pooled = jnp.tanh(self.pooler(x[:, 0]))
    return mlm_logits, self.nsp_classifier(pooled).astype(jnp.float32)


class Pretraining(Task):
  logical_axis_rules = layers.LOGICAL_AXIS_RULES
  # The shared embedding is an input weight (its read-out use is scaled in Embed.attend); the
  # next-sentence classifier reads out 2 logits; the biases over the vocabulary / 2 classes are fixed.
  parameter_roles = ((r'nsp_classifier/kernel', 'output'), (r'(mlm_bias|nsp_classifier/bias)', 'fixed'),
                     (r'.*kernel', 'hidden'), (r'.*', 'input'))

  def __init__(self, config):
    super().__init__(config)
    task = config.task
    model = model_config(config)
    layers.check_sizes(model.features, model.num_heads, task.dtype)
    if task.vocab_size < 1:
      raise ConfigError(f'task.vocab_size={task.vocab_size} must be >= 1')
    if not 0 < task.max_predictions_per_seq < task.max_seq_length:
      raise ConfigError(f'task.max_predictions_per_seq={task.max_predictions_per_seq} must be in '
                        f'[1, max_seq_length={task.max_seq_length})')
    self.eval_metric_names = ('loss', 'mlm_loss', 'mlm_accuracy') + (
        ('nsp_loss', 'nsp_accuracy') if task.next_sentence else ())
    self.data_dir = os.path.join(os.path.expanduser(config.data_dir), os.path.expanduser(task.dataset))
    self.model = Bert(model)
    self._eval = None

  @property
  def width(self) -> int:
    return self.model.config.features

  # ---- Data.
  def _prepared(self) -> str:
    """The prepared folder, the synthetic corpus prepared into it first where the config says so;
    refuses data of other lengths or a larger vocabulary than the model's."""
    task = self.config.task
    if task.generate and not bert_pretraining.is_prepared(self.data_dir):
      synthetic_text.prepare_tiny(
          self.data_dir, num_documents=task.generated_documents, vocab_size=task.vocab_size,
          max_seq_length=task.max_seq_length, max_predictions_per_seq=task.max_predictions_per_seq,
          seed=task.data_seed)
    bert_pretraining.check_prepared(self.data_dir, task.max_seq_length, task.max_predictions_per_seq)
    vocab_size = bert_pretraining.info(self.data_dir)['vocab_size']
    if vocab_size > task.vocab_size:
      raise ConfigError(f'task.vocab_size={task.vocab_size} is smaller than the prepared data\'s '
                        f'vocabulary ({vocab_size} ids in {self.data_dir})')
    return self.data_dir

  def prepare_data(self):
    self._prepared()

  def abstract_batch(self, split):
    """int32 features as data/bert_pretraining.py reads them (masked_lm_weights too); labels are [rows]."""
    task = self.config.task
    tokens, predictions = (task.max_seq_length,), (task.max_predictions_per_seq,)
    return abstract_global_batch(self.config, split, {
        'input_ids': (tokens, jnp.int32), 'input_mask': (tokens, jnp.int32), 'segment_ids': (tokens, jnp.int32),
        'masked_lm_positions': (predictions, jnp.int32), 'masked_lm_ids': (predictions, jnp.int32),
        'masked_lm_weights': (predictions, jnp.int32), 'next_sentence_labels': ((), jnp.int32)})

  def train_data(self, process_index, process_count, start_step, position=None):
    return bert_pretraining.train_batches(self._prepared(), self.config.global_batch_size, self.config.seed,
                                          start_step, process_index, process_count, position)

  def eval_data(self, process_index, process_count):
    if self._eval is None:
      self._eval = bert_pretraining.eval_arrays(self._prepared())
    return batches.eval_batches(self._eval, self.config.eval_batch_size, process_index, process_count)

  # ---- Model.
  def init(self, rng):
    task = self.config.task
    ids = jnp.zeros((1, task.max_seq_length), jnp.int32)
    example = {'input_ids': ids, 'input_mask': ids + 1, 'segment_ids': ids,
               'masked_lm_positions': jnp.zeros((1, task.max_predictions_per_seq), jnp.int32)}
    return self.model.init(rng, example, deterministic=True)['params'], {}

  def loss(self, params, model_state, batch, rng):
    mlm_logits, nsp_logits = self.model.apply({'params': params}, batch, deterministic=False,
                                              rngs={'dropout': rng})
    weights = batch['masked_lm_weights'].astype(jnp.float32)
    loss = losses.softmax_cross_entropy(mlm_logits, batch['masked_lm_ids'], weights)
    correct = (jnp.argmax(mlm_logits, -1) == batch['masked_lm_ids']) * weights
    metrics = {'mlm_loss': loss, 'mlm_accuracy': jnp.sum(correct) / jnp.maximum(jnp.sum(weights), 1)}
    if nsp_logits is not None:
      labels = batch['next_sentence_labels'].reshape(-1)
      metrics['nsp_loss'] = losses.softmax_cross_entropy(nsp_logits, labels)
      metrics['nsp_accuracy'] = jnp.mean(jnp.argmax(nsp_logits, -1) == labels)
      loss = loss + metrics['nsp_loss']
    return loss, (model_state, metrics)

  def evaluate(self, params, model_state, batch):
    mlm_logits, nsp_logits = self.model.apply({'params': params}, batch, deterministic=True)
    example_weight = batch['weight']
    weights = batch['masked_lm_weights'] * example_weight[:, None]
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, batch['masked_lm_ids'])
    sums = {'mlm_loss': jnp.sum(cross_entropy * weights),
            'mlm_accuracy': jnp.sum((jnp.argmax(mlm_logits, -1) == batch['masked_lm_ids']) * weights),
            'mlm_count': jnp.sum(weights), 'count': jnp.sum(example_weight)}
    if nsp_logits is not None:
      labels = batch['next_sentence_labels'].reshape(-1)
      sums['nsp_loss'] = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(nsp_logits, labels)
                                 * example_weight)
      sums['nsp_accuracy'] = jnp.sum((jnp.argmax(nsp_logits, -1) == labels) * example_weight)
    return sums

  def eval_metrics(self, sums):
    metrics = {'mlm_loss': sums['mlm_loss'] / sums['mlm_count'],
               'mlm_accuracy': sums['mlm_accuracy'] / sums['mlm_count']}
    if 'nsp_loss' in sums:
      metrics.update(nsp_loss=sums['nsp_loss'] / sums['count'], nsp_accuracy=sums['nsp_accuracy'] / sums['count'])
    metrics['loss'] = metrics['mlm_loss'] + metrics.get('nsp_loss', 0.0)
    return metrics
