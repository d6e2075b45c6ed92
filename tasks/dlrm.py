"""DLRM on Criteo click logs (Naumov et al. 2019; the MLPerf reference the paper compares against).

A bottom MLP over the 13 dense features, one embedding table per categorical feature
(26), the pairwise dot products of the 27 resulting vectors, and a top MLP over those
and the bottom output, giving one click logit. Tables are sharded row-wise over the
whole mesh (logical axis `table_rows` on `data` x `model`), so a table larger than one
device fits, and every device holds an equal share of the embeddings.

Evaluation over the whole eval split: `log_loss` (the mean binary cross-entropy,
also `loss`) and `auc`, the exact ROC AUC of all predictions (data/criteo.py), which
the trainer gathers through the task's decode path.

Data: Criteo TSV under `<data_dir>/<task.dataset>` (data/criteo.py); with
`task.generate=True` a planted-model set is written there first
(data/synthetic_criteo.py, which also records its Bayes-optimal AUC); `prepare_data`
logs that ceiling.
"""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from data import criteo, synthetic_criteo
from errors import ConfigError
from tasks import losses
from tasks.base import Task, abstract_global_batch, width_ratio

EVAL_CACHE_BYTES = 2 * 2**30  # a process's parsed eval rows above this are streamed at every pass


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  table_sizes: tuple[int, ...]
  embedding_dim: int
  bottom_mlp: tuple[int, ...]  # hidden widths; a last layer of embedding_dim is added
  top_mlp: tuple[int, ...]     # hidden widths; a last layer of 1 (the logit) is added
  width_ratio: float = 1.0     # width / base_width under muP, else 1
  row_multiple: int = 128      # rows padded to a multiple of this, so the mesh the tables shard on divides them


def _dense(features: int, name: str, init_scale: float = 1.0) -> nn.Dense:
  init = nn.initializers.variance_scaling(init_scale ** 2, 'fan_avg', 'truncated_normal')  # Glorot normal
  return nn.Dense(features, name=name,
                  kernel_init=nn.with_logical_partitioning(init, ('mlp_in', 'mlp')),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))


class Dlrm(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, dense, sparse):
    """`sparse` None: each table parameter already holds its looked-up rows, one per example
    (ClickThrough.gather_rows)."""
    c = self.config
    x = dense
    # Under muP the first layers (input weights, fan-in fixed) keep the base width's init: Glorot's
    # 1/sqrt(fan_in + fan_out) would shrink them as the width grows.
    input_scale = c.width_ratio ** 0.5
    for i, width in enumerate(c.bottom_mlp + (c.embedding_dim,)):
      x = nn.relu(_dense(width, f'bottom_{i}', input_scale if i == 0 else 1.0)(x))
    vectors = [x]
    for i, size in enumerate(c.table_sizes):
      if sparse is None:
        vectors.append(self.get_variable('params', f'table_{i}'))
        continue
      rows = -(-size // c.row_multiple) * c.row_multiple  # padding rows are never looked up
      scale = 1.0 / np.sqrt(size)  # the reference's uniform(-1/sqrt(n), 1/sqrt(n))
      table = self.param(f'table_{i}', nn.with_logical_partitioning(
          lambda key, shape, scale=scale: nn.initializers.uniform(2 * scale)(key, shape) - scale,
          ('table_rows', 'embed')), (rows, c.embedding_dim))
      vectors.append(jnp.take(table, sparse[:, i], axis=0))
    stacked = jnp.stack(vectors, axis=1)  # [batch, 27, dim]
    dots = jnp.einsum('bid,bjd->bij', stacked, stacked)
    upper_i, upper_j = np.triu_indices(len(vectors), k=1)
    z = jnp.concatenate([x, dots[:, upper_i, upper_j]], axis=1)
    for i, width in enumerate(c.top_mlp):
      z = nn.relu(_dense(width, f'top_{i}', input_scale if i == 0 else 1.0)(z))
    return _dense(1, f'top_{len(c.top_mlp)}')(z)[:, 0]


class ClickThrough(Task):
  logical_axis_rules = (('batch', 'data'), ('table_rows', ('data', 'model')), ('embed', None),
                        ('mlp_in', None), ('mlp', None))
  eval_metric_names = ('loss', 'log_loss', 'auc')
  decode_every = 1  # AUC needs every prediction: it is computed at every evaluation

  def __init__(self, config):
    super().__init__(config)
    task = config.task
    sizes = tuple(task.table_sizes)
    criteo.check_table_sizes(sizes)
    if task.row_multiple < 1:
      raise ConfigError(f'task.row_multiple={task.row_multiple} must be >= 1')
    if min((task.embedding_dim, *task.bottom_mlp, *task.top_mlp)) < 1:
      raise ConfigError(f'task.embedding_dim={task.embedding_dim}, task.bottom_mlp={tuple(task.bottom_mlp)} and '
                        f'task.top_mlp={tuple(task.top_mlp)} must be positive sizes')
    if task.max_eval_examples < 0:
      raise ConfigError(f'task.max_eval_examples={task.max_eval_examples} must be >= 0 (0 = the whole eval split)')
    self.model = Dlrm(ModelConfig(sizes, task.embedding_dim, tuple(task.bottom_mlp), tuple(task.top_mlp),
                                  width_ratio(config, self.width), task.row_multiple))
    # Width is the MLPs' (they grow together); the embedding dimension is fixed. So the tables are
    # `fixed`, each MLP's first layer (fan-in: 13 dense features / the interactions) an input weight,
    # and its last (to embedding_dim / to the logit) a read-out.
    last = f'(bottom_{len(task.bottom_mlp)}|top_{len(task.top_mlp)})'
    self.parameter_roles = ((r'table_\d+', 'fixed'), (r'(bottom|top)_0/.*', 'input'),
                            (f'{last}/kernel', 'output'), (f'{last}/bias', 'fixed'),
                            (r'.*/bias', 'input'), (r'.*/kernel', 'hidden'))
    self.data_dir = os.path.join(os.path.expanduser(config.data_dir), os.path.expanduser(task.dataset))
    self._eval_cache = {}  # (process index, process count) -> the parsed eval batches of this process

  @property
  def width(self) -> int:
    """The widest MLP layer's."""
    return max(self.config.task.bottom_mlp + self.config.task.top_mlp)

  def _prepared(self) -> str:
    """The dataset folder, the planted-model set generated into it first where the config says so."""
    task = self.config.task
    if task.generate:
      self.bayes = synthetic_criteo.prepare_tiny(self.data_dir, task.generated_train, task.generated_eval,
                                                 task.data_seed)
    criteo.check_prepared(self.data_dir)
    return self.data_dir

  def prepare_data(self):
    self._prepared()
    if self.config.task.generate:
      logging.info('generated click logs: on the eval split the planted model has AUC %.4f and log loss '
                   '%.4f (the ceiling); the constant predictor has log loss %.4f', self.bayes['auc'],
                   self.bayes['log_loss'], self.bayes['constant_log_loss'])

  def abstract_batch(self, split):
    return abstract_global_batch(self.config, split, {'dense': ((criteo.NUM_DENSE,), np.float32),
                                                      'sparse': ((criteo.NUM_SPARSE,), np.int32),
                                                      'label': ((), np.float32)})

  def train_data(self, process_index, process_count, start_step, position=None):
    return criteo.train_batches(self._prepared(), self.config.task.table_sizes, self.config.global_batch_size,
                                self.config.seed, start_step, process_index, process_count, position=position)

  def eval_data(self, process_index, process_count):
    """The eval split, parsed once per run where this process's rows fit in EVAL_CACHE_BYTES: every
    evaluation reads it twice (log loss, then the AUC's predictions), and parsing the TSV dominates."""
    cached = self._eval_cache.get((process_index, process_count))
    return iter(cached) if cached is not None else self._read_eval(process_index, process_count)

  def _read_eval(self, process_index, process_count):
    kept, size = [], 0
    for batch in criteo.eval_batches(self._prepared(), self.config.task.table_sizes, self.config.eval_batch_size,
                                     process_index, process_count, self.config.task.max_eval_examples):
      if kept is not None:
        size += sum(array.nbytes for array in batch.values())
        if size <= EVAL_CACHE_BYTES:
          kept.append(batch)
        else:
          kept = None  # streamed at every pass instead
      yield batch
    if kept is not None:  # only a whole pass is kept
      self._eval_cache[(process_index, process_count)] = kept

  def decode_data(self, process_index, process_count):
    for i, batch in enumerate(self.eval_data(process_index, process_count)):
      rows = len(batch['label'])
      yield {**batch, 'index': np.arange(i * rows, (i + 1) * rows, dtype=np.int32)}

  def init(self, rng):
    dense = jnp.zeros((1, criteo.NUM_DENSE), jnp.float32)
    sparse = jnp.zeros((1, criteo.NUM_SPARSE), jnp.int32)
    return self.model.init(rng, dense, sparse)['params'], {}

  def gather_rows(self, params, batch):
    ids = batch['sparse']
    rows, lookups = dict(params), jax.tree.map(lambda _: None, params)
    for i in range(ids.shape[1]):
      rows[f'table_{i}'] = jnp.take(params[f'table_{i}'], ids[:, i], axis=0)
      lookups[f'table_{i}'] = ids[:, i]
    return rows, {**batch, 'sparse': None}, lookups

  def loss(self, params, model_state, batch, rng):
    logits = self.model.apply({'params': params}, batch['dense'], batch['sparse'])
    loss = losses.sigmoid_cross_entropy(logits, batch['label'])
    accuracy = jnp.mean((logits > 0) == (batch['label'] > 0.5))
    return loss, (model_state, {'accuracy': accuracy})

  def evaluate(self, params, model_state, batch):
    logits = self.model.apply({'params': params}, batch['dense'], batch['sparse'])
    cross_entropy = optax.sigmoid_binary_cross_entropy(logits, batch['label'])
    return {'log_loss': jnp.sum(cross_entropy * batch['weight']), 'count': jnp.sum(batch['weight'])}

  def eval_metrics(self, sums):
    metrics = super().eval_metrics(sums)
    metrics['loss'] = metrics['log_loss']
    return metrics

  def predict(self, params, model_state, batch):
    """[rows, 2]: click probability and label, so AUC needs nothing but the predictions."""
    logits = self.model.apply({'params': params}, batch['dense'], batch['sparse'])
    return jnp.stack([jax.nn.sigmoid(logits), batch['label']], axis=1)

  def decode_metrics(self, index, predictions):
    return {'auc': criteo.auc(predictions[:, 1], predictions[:, 0])}
