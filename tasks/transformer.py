"""Transformer translation, WMT'14 English -> French (Vaswani et al. 2017; Anil et al. 2020, Sec. 6).

Encoder-decoder over one shared SentencePiece vocabulary, with either one embedding
matrix shared by source, target and the output projection (`task.tie_embeddings`,
Vaswani et al.'s) or a matrix for each of the three (Anil et al.'s Transformer-Big,
whose 375.4M parameters count them), dropout, and label-smoothed cross-entropy for
training. Evaluation reports token log-perplexity (`loss`, no smoothing: the paper's
target metric) and per-token accuracy on newstest2014, and every `task.bleu_every`
evaluations the detokenized BLEU (sacrebleu) of beam-search translations of the first
`task.bleu_sentences` sentences.

Data: tfds `wmt14_translate/fr-en` under the task's tfds data_dir (`data/wmt.py`);
with `task.generate=True` a synthetic corpus is written there in the same form
first (`data/synthetic_translation.py`), so tiny runs use the real reader.
"""

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import sacrebleu

from errors import ConfigError
from data import batches, synthetic_translation, wmt
from tasks import beam_search, layers, losses
from tasks.base import Task, abstract_global_batch, mesh_axis_size, preset_fields, width_ratio


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(layers.ModelConfig):
  encoder_layers: int
  decoder_layers: int
  tie_embeddings: bool = True  # one matrix for source, target and output; else one for each


class Transformer(nn.Module):
  config: ModelConfig
  decode: bool = False  # build the decoder with a key/value cache, for beam search

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    embed = functools.partial(layers.Embed, c.vocab_size, c.padded_vocab_size, c.features, dtype, c.width_ratio)
    if c.tie_embeddings:
      self.embed = embed()
    else:  # the output matrix is used only through `attend`, as the tied one is for its logits
      self.source_embed, self.target_embed, self.output_embed = embed(), embed(), embed()
    encoder_block = layers.rematerialized(layers.EncoderBlock, c.remat)
    self.encoder_blocks = [
        encoder_block(c.num_heads, c.features, c.hidden, c.dropout, c.attention_dropout, dtype,
                      width_ratio=c.width_ratio)
        for _ in range(c.encoder_layers)]
    # Decoding (beam search) has no backward pass to save memory for.
    decoder_block = layers.rematerialized(layers.DecoderBlock, 'none' if self.decode else c.remat)
    self.decoder_blocks = [
        decoder_block(c.num_heads, c.features, c.hidden, c.dropout, c.attention_dropout, dtype,
                      decode=self.decode, width_ratio=c.width_ratio)
        for _ in range(c.decoder_layers)]
    self.encoder_norm = layers.layer_norm(dtype)
    self.decoder_norm = layers.layer_norm(dtype)
    self.dropout = nn.Dropout(c.dropout)

  def _embedding(self, role: str) -> layers.Embed:
    """The matrix for `role` ('source', 'target' or 'output'): the shared one, or that role's own."""
    return self.embed if self.config.tie_embeddings else getattr(self, f'{role}_embed')

  def _embed(self, side, ids, position, deterministic):
    embed = self._embedding(side)
    x = embed(ids) + layers.sinusoidal_positions(position, self.config.features).astype(embed.dtype)
    return self.dropout(x, deterministic=deterministic)

  def encode(self, inputs, inputs_segmentation, inputs_position, *, deterministic: bool):
    x = self._embed('source', inputs, inputs_position, deterministic)
    mask = layers.segment_mask(inputs_segmentation, inputs_segmentation)
    for block in self.encoder_blocks:
      x = block(x, mask, deterministic=deterministic)
    return self.encoder_norm(x)

  def _decode(self, x, encoded, self_mask, cross_mask, deterministic, decode_position=None):
    for block in self.decoder_blocks:
      x = block(x, encoded, self_mask, cross_mask, deterministic=deterministic,
                decode_position=decode_position)
    logits = self._embedding('output').attend(self.decoder_norm(x)).astype(jnp.float32)
    return layers.mask_vocab_padding(logits, self.config.vocab_size)

  def __call__(self, batch, *, deterministic: bool):
    """Teacher-forced logits [batch, length, padded vocab] for packed (or unpacked) pairs."""
    encoded = self.encode(batch['inputs'], batch['inputs_segmentation'], batch['inputs_position'],
                          deterministic=deterministic)
    targets, segmentation, position = (
        batch['targets'], batch['targets_segmentation'], batch['targets_position'])
    # Shift right within each segment: every segment's decoder input starts with id 0.
    shifted = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    decoder_inputs = jnp.where(position == 0, 0, shifted)
    x = self._embed('target', decoder_inputs, position, deterministic)
    self_mask = layers.segment_mask(segmentation, segmentation) & layers.causal_mask(targets.shape[1])
    cross_mask = layers.segment_mask(segmentation, batch['inputs_segmentation'])
    return self._decode(x, encoded, self_mask, cross_mask, deterministic)

  def decode_step(self, encoded, inputs_segmentation, tokens, position):
    """Log-probabilities of the next token [n, padded vocab], given tokens [n, 1] at `position`.

    With `position=None` (and tokens [n, max_length]) it only creates the empty cache.
    """
    steps = jnp.arange(tokens.shape[1]) if position is None else jnp.full((1,), position)
    x = self._embed('target', tokens, jnp.broadcast_to(steps, tokens.shape), deterministic=True)
    cross_mask = (inputs_segmentation > 0)[:, None, None, :]
    logits = self._decode(x, encoded, None, cross_mask, True, decode_position=position)
    return jax.nn.log_softmax(logits[:, -1])


def cached_decoder(config: ModelConfig, params, encoded, inputs_segmentation, max_length: int):
  """(step(tokens [n, 1], position, cache) -> (log-probs [n, vocab], cache), empty cache) for beam search."""
  apply = functools.partial(Transformer(config, decode=True).apply, method=Transformer.decode_step,
                            mutable=['cache'])
  empty = jnp.zeros((encoded.shape[0], max_length), jnp.int32)
  _, cache = apply({'params': params}, encoded, inputs_segmentation, empty, None)

  def step(tokens, position, cache):
    return apply({'params': params, **cache}, encoded, inputs_segmentation, tokens, position)
  return step, cache


# `base` and `big`: Vaswani et al. 2017, Table 3 (dropout 0.1 for big on en-fr, Sec. 6.1).
# `big_ff8192`: Anil et al. 2020's Transformer-Big (Sec. 6), big with 8192 feed-forward units.
# `tiny` is for CPU tests and demos.
MODELS = {
    'tiny': dict(features=64, num_heads=4, hidden=256, encoder_layers=2, decoder_layers=2,
                 dropout=0.0, attention_dropout=0.0),
    'base': dict(features=512, num_heads=8, hidden=2048, encoder_layers=6, decoder_layers=6,
                 dropout=0.1, attention_dropout=0.1),
    'big': dict(features=1024, num_heads=16, hidden=4096, encoder_layers=6, decoder_layers=6,
                dropout=0.1, attention_dropout=0.1),
    'big_ff8192': dict(features=1024, num_heads=16, hidden=8192, encoder_layers=6, decoder_layers=6,
                       dropout=0.1, attention_dropout=0.1),
}


def model_config(config) -> ModelConfig:
  """The preset `task.model`, with any task field set explicitly (>= 0 dropouts, > 0 sizes) overriding it."""
  task = config.task
  fields = preset_fields(task, MODELS)
  return ModelConfig(vocab_size=task.vocab_size, dtype=task.dtype, remat=task.remat,
                     tie_embeddings=task.tie_embeddings, width_ratio=width_ratio(config, fields['features']),
                     vocab_shards=mesh_axis_size(config, layers.LOGICAL_AXIS_RULES, 'vocab'), **fields)


# The arrays of every training and eval batch (data/wmt.py); eval batches add `weight`.
BATCH_KEYS = ('inputs', 'targets', 'inputs_segmentation', 'targets_segmentation', 'inputs_position',
              'targets_position')


class Translation(Task):
  logical_axis_rules = layers.LOGICAL_AXIS_RULES
  eval_metric_names = ('loss', 'accuracy', 'perplexity', 'bleu')
  # Embeddings are input weights; the read-out use (of the shared or the output one) is scaled in Embed.attend.
  parameter_roles = ((r'.*(kernel)', 'hidden'), (r'.*', 'input'))

  def __init__(self, config):
    super().__init__(config)
    task = config.task
    model = model_config(config)
    layers.check_sizes(model.features, model.num_heads, task.dtype)
    if not 0 <= task.label_smoothing < 1:
      raise ConfigError(f'task.label_smoothing={task.label_smoothing} must be in [0, 1)')
    for field in ('vocab_size', 'max_length', 'eval_max_length', 'bleu_every', 'beam_size', 'max_decode_length'):
      if task[field] < 1:
        raise ConfigError(f'task.{field}={task[field]} must be >= 1')
    if task.train_shards < 0 or (task.train_shards and config.global_batch_size % task.train_shards):
      raise ConfigError(f'task.train_shards={task.train_shards} must be 0 or divide '
                        f'global_batch_size={config.global_batch_size}')
    self.data_dir = os.path.join(os.path.expanduser(config.data_dir), os.path.expanduser(task.tfds_dir))
    self.model = Transformer(model)
    self.decode_every = task.bleu_every if task.bleu_sentences > 0 else 0
    self._tokenizer = None
    self._eval = None
    self._decode = None

  @property
  def width(self) -> int:
    return self.model.config.features

  # ---- Data.
  def tokenizer(self):
    """The shared vocabulary, after the corpus is generated (where the config says so) and checked;
    refuses one with more pieces than the model's task.vocab_size."""
    if self._tokenizer is None:
      task = self.config.task
      if task.generate and not wmt.is_prepared(self.data_dir):
        synthetic_translation.generate(self.data_dir, task.generated_train_pairs,
                                       task.generated_eval_pairs, seed=task.data_seed)
      wmt.check_prepared(self.data_dir)
      tokenizer = wmt.load_tokenizer(self.data_dir, task.vocab_size)
      if tokenizer.get_piece_size() > task.vocab_size:
        raise ConfigError(f'the tokenizer {wmt.tokenizer_path(self.data_dir, task.vocab_size)} has '
                          f'{tokenizer.get_piece_size()} pieces, more than task.vocab_size={task.vocab_size}')
      self._tokenizer = tokenizer
    return self._tokenizer

  def prepare_data(self):
    self.tokenizer()

  def abstract_batch(self, split):
    """Six int32 arrays [rows, length]: packed rows of max_length tokens in training, one pair a row
    of eval_max_length in evaluation."""
    task = self.config.task
    length = task.max_length if split == 'train' else task.eval_max_length
    return abstract_global_batch(self.config, split, {name: ((length,), jnp.int32) for name in BATCH_KEYS})

  def train_data(self, process_index, process_count, start_step, position=None):
    return wmt.train_batches(
        self.data_dir, self.tokenizer(), self.config.global_batch_size, self.config.task.max_length,
        self.config.seed, start_step, process_index, process_count, self.config.task.train_shards, position)

  def eval_data(self, process_index, process_count):
    if self._eval is None:
      self._eval = wmt.eval_arrays(self.data_dir, self.tokenizer(), self.config.task.eval_max_length)
    return batches.eval_batches(self._eval, self.config.eval_batch_size, process_index, process_count)

  def _decode_set(self):
    if self._decode is None:
      self._decode = wmt.decode_arrays(self.data_dir, self.tokenizer(), self.config.task.eval_max_length,
                                       self.config.task.bleu_sentences)
    return self._decode

  def decode_data(self, process_index, process_count):
    arrays, _ = self._decode_set()
    return batches.eval_batches(arrays, self.config.eval_batch_size, process_index, process_count)

  # ---- Model.
  def _example(self, length: int):
    ids = jnp.ones((1, length), jnp.int32)
    return {'inputs': ids, 'targets': ids, 'inputs_segmentation': ids, 'targets_segmentation': ids,
            'inputs_position': jnp.zeros_like(ids), 'targets_position': jnp.zeros_like(ids)}

  def init(self, rng):
    variables = self.model.init(rng, self._example(self.config.task.max_length), deterministic=True)
    return variables['params'], {}

  def loss(self, params, model_state, batch, rng):
    logits = self.model.apply({'params': params}, batch, deterministic=False, rngs={'dropout': rng})
    weights = (batch['targets_segmentation'] > 0).astype(jnp.float32)
    loss = self._smoothed_cross_entropy(logits, batch['targets'], weights)
    correct = (jnp.argmax(logits, -1) == batch['targets']) * weights
    return loss, (model_state, {'accuracy': jnp.sum(correct) / jnp.maximum(jnp.sum(weights), 1),
                                'tokens': jnp.sum(weights)})

  def _smoothed_cross_entropy(self, logits, targets, weights):
    """Label-smoothed cross-entropy whose smoothing mass is spread over the real vocabulary only
    (the padding's log-probabilities are NEG_INF): (1 - s) * CE + s * mean over real tokens of -log p."""
    smoothing, vocab_size = self.config.task.label_smoothing, self.config.task.vocab_size
    cross_entropy = losses.softmax_cross_entropy(logits, targets, weights)
    if not smoothing:
      return cross_entropy
    real = jnp.arange(logits.shape[-1]) < vocab_size
    uniform = -jnp.sum(jnp.where(real, jax.nn.log_softmax(logits), 0.0), -1) / vocab_size
    mean_uniform = jnp.sum(uniform * weights) / jnp.maximum(jnp.sum(weights), 1)
    return (1 - smoothing) * cross_entropy + smoothing * mean_uniform

  def evaluate(self, params, model_state, batch):
    logits = self.model.apply({'params': params}, batch, deterministic=True)
    weights = (batch['targets_segmentation'] > 0) * batch['weight'][:, None]
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
    correct = jnp.argmax(logits, -1) == batch['targets']
    return {'loss': jnp.sum(cross_entropy * weights), 'accuracy': jnp.sum(correct * weights),
            'count': jnp.sum(weights)}

  def eval_metrics(self, sums):
    metrics = super().eval_metrics(sums)
    # Capped at float32's largest: TensorBoard writes scalars as float32 (a loss above 88.7 overflowed it).
    metrics['perplexity'] = float(np.exp(min(metrics['loss'], np.log(np.finfo(np.float32).max))))
    return metrics

  def predict(self, params, model_state, batch):
    """Beam-search translations [batch, max_decode_length] of batch['inputs']."""
    task = self.config.task
    encoded = self.model.apply({'params': params}, batch['inputs'], batch['inputs_segmentation'],
                               batch['inputs_position'], deterministic=True,
                               method=Transformer.encode)
    beam = task.beam_size
    encoded, segmentation = beam_search.repeat_for_beams(
        (encoded, batch['inputs_segmentation']), beam)
    step, cache = cached_decoder(self.model.config, params, encoded, segmentation,
                                 task.max_decode_length)
    tokens, _ = beam_search.beam_search(
        step, cache, batch_size=batch['inputs'].shape[0], beam_size=beam,
        max_length=task.max_decode_length, eos=wmt.EOS_ID, alpha=task.length_penalty)
    return tokens

  def decode_metrics(self, index: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Detokenized corpus BLEU of the predictions (rows by `index`) against the raw references."""
    _, references = self._decode_set()
    order = np.argsort(index)
    hypotheses = [wmt.decode_ids(self.tokenizer(), predictions[i]) for i in order]
    return {'bleu': sacrebleu.corpus_bleu(hypotheses, [[references[index[i]] for i in order]]).score}
