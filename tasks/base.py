"""The Task contract: a benchmark's model, data, loss, metrics. Nothing about optimizers.

Parameters returned by `init` may carry Flax logical-partitioning metadata
(`nn.with_logical_partitioning`); `logical_axis_rules` maps those logical names
to mesh axes so the trainer can shard them. Unannotated leaves are replicated.
"""

import abc
from typing import Any, Iterable, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from configs import ConfigError

Batch = dict[str, np.ndarray]
Metrics = dict[str, jax.Array]


class Task(abc.ABC):
  # (logical axis name, mesh axis name or None), first match wins (Flax semantics).
  logical_axis_rules: Sequence[tuple[str, str | None]] = (('batch', 'data'),)
  # Names that `eval_metrics` (and `decode_metrics`) return, so a target can be checked before training.
  eval_metric_names: Sequence[str] = ('loss',)
  # Generation-based evaluation (e.g. BLEU of beam search) is slow: it runs every
  # `decode_every` evaluations and at the last step; 0 = the task has none.
  decode_every: int = 0

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    """(params, model_state); params may be logically partitioned boxes."""

  @abc.abstractmethod
  def loss(self, params, model_state, batch: Batch, rng: jax.Array) -> tuple[jax.Array, tuple[Any, Metrics]]:
    """(scalar mean loss, (new model_state, per-batch train metrics))."""

  @abc.abstractmethod
  def evaluate(self, params, model_state, batch: Batch) -> Metrics:
    """Sums over the batch's examples (respecting batch['weight']), incl. 'count'."""

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    """Final metrics from the sums over the whole eval set; default: per-example means."""
    count = sums['count']
    return {k: v / count for k, v in sums.items() if k != 'count'}

  @abc.abstractmethod
  def train_data(self, process_index: int, process_count: int, start_step: int) -> Iterator[Batch]:
    """This process's share of each global batch, from step `start_step` on."""

  @abc.abstractmethod
  def eval_data(self, process_index: int, process_count: int) -> Iterable[Batch]:
    """One pass over the eval set, this process's share, padded with batch['weight']."""

  def decode_data(self, process_index: int, process_count: int) -> Iterable[Batch]:
    """Inputs to generate from, this process's share, with batch['weight'] and batch['index']."""
    raise NotImplementedError

  def predict(self, params, model_state, batch: Batch) -> jax.Array:
    """Generated outputs [batch, ...] (jitted by the trainer)."""
    raise NotImplementedError

  def decode_metrics(self, index: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Host-side metrics of all generated rows (`index` says which input each row is)."""
    raise NotImplementedError


def preset_fields(task: ml_collections.ConfigDict, presets: dict[str, dict]) -> dict:
  """The model preset `task.model`, with any field the task sets explicitly overriding it.

  Explicit means > 0 for sizes and >= 0 for dropouts: configs leave 0 / -1 for "the preset's".
  """
  if task.model not in presets:
    raise ConfigError(f'task.model={task.model!r}: choose one of {", ".join(presets)}')
  fields = dict(presets[task.model])
  for name in fields:
    explicit = task[name] >= 0 if 'dropout' in name else task[name] > 0
    if explicit:
      fields[name] = task[name]
  return fields
