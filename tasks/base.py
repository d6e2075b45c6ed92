"""The Task contract: a benchmark's model, data, loss, metrics. Nothing about optimizers.

The model and the shapes of its batches (`init`, `abstract_batch`) follow from the config
alone, so a run can be planned and its steps compiled where there is no data;
`prepare_data` is the one place that makes the data exist and checks it against the config.

Parameters returned by `init` may carry Flax logical-partitioning metadata
(`nn.with_logical_partitioning`); `logical_axis_rules` maps those logical names
to mesh axes so the trainer can shard them. Unannotated leaves are replicated.

Every parameter also has a width role (input / hidden / output / fixed, see
optimizers/parameterization.py), declared by `parameter_roles`: regular
expressions over the parameter's path ('encoder/block_0/mlp/wi/kernel'), first
match wins. `width` is the size that `base_width` is compared with under muP.
"""

import abc
import math
import re
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import numpy as np

from errors import ConfigError
from data import batches

Batch = dict[str, np.ndarray]
SPLITS = ('train', 'eval')
# How a parameter's fan-in / fan-out grow with the width: no / yes, yes / yes, yes / no, no / no.
ROLES = ('input', 'hidden', 'output', 'fixed')
Metrics = dict[str, jax.Array]
# (logical axis name, mesh axis name, a tuple of them, or None), first match wins (Flax semantics).
AxisRules = Sequence[tuple[str, str | tuple[str, ...] | None]]


class Task(abc.ABC):
  logical_axis_rules: AxisRules = (('batch', 'data'),)
  # Names that `eval_metrics` (and `decode_metrics`) return, so a target can be checked before training.
  eval_metric_names: Sequence[str] = ('loss',)
  # Generation-based evaluation (e.g. BLEU of beam search) is slow: it runs every
  # `decode_every` evaluations and at the last step; 0 = the task has none.
  decode_every: int = 0
  # (path regex, role), first full match wins; every parameter must match one.
  parameter_roles: Sequence[tuple[str, str]] = ()

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    """(params, model_state) from the config alone (never reading data), so it runs without data;
    params may be logically partitioned boxes."""

  def prepare_data(self) -> None:
    """Makes sure the data exists (generating the offline set where the config says so) and
    agrees with the config, else a ConfigError naming the mismatch; the trainer calls it once,
    before training. Default: nothing to prepare."""

  @abc.abstractmethod
  def abstract_batch(self, split: str) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch of `split` ('train' or 'eval') as the trainer receives it (names, shapes,
    dtypes), from the config alone: the steps compile ahead of time without data."""

  @property
  def width(self) -> int:
    """The model's width: all widths grow in proportion to it when a sweep widens the model."""
    raise ConfigError(f'task {self.config.task.name!r} declares no width, so parameterization=mup '
                      f'cannot scale it')

  def gather_rows(self, params, batch: Batch):
    """For sparse embedding updates (optimizers/embeddings.py): (params with each embedding table
    replaced by the rows the batch looks up, one per lookup; the batch with its ids pointing into
    those rows; a tree like params holding each table's looked-up ids, None elsewhere). The loss of
    the first two equals the loss of params and batch, and its gradient at a table is a row per lookup."""
    raise ConfigError(f'task {self.config.task.name!r} has no embedding tables to update sparsely: '
                      f"set embedding_updates.rule='dense'")

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
  def train_data(self, process_index: int, process_count: int, start_step: int,
                 position=None) -> batches.Stream:
    """This process's share of each global batch, from step `start_step` on.

    `position` is the stream's own `position` after the batch before `start_step`, when a
    checkpoint kept it: the reader seeks there instead of replaying the steps before.
    """

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


def abstract_global_batch(config: ml_collections.ConfigDict, split: str,
                          row_specs: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch of `split` from each array's (shape of one row, dtype): global_batch_size
  rows for 'train'; eval_batch_size rows for 'eval', which also carries the float32 `weight`
  (0 on padding rows) of every eval batch."""
  if split not in SPLITS:
    raise ConfigError(f'batch split {split!r}: choose one of {", ".join(SPLITS)}')
  rows = config.global_batch_size if split == 'train' else config.eval_batch_size
  batch = {name: jax.ShapeDtypeStruct((rows, *shape), dtype) for name, (shape, dtype) in row_specs.items()}
  if split == 'eval':
    batch['weight'] = jax.ShapeDtypeStruct((rows,), np.float32)
  return batch


def width_ratio(config: ml_collections.ConfigDict, width: int) -> float:
  """m = width / base_width under parameterization=mup; 1 under standard (nothing then changes)."""
  return width / config.base_width if config.parameterization == 'mup' else 1.0


def mesh_axis_size(config: ml_collections.ConfigDict, rules: AxisRules, logical: str) -> int:
  """How many ways config.mesh splits the logical axis `logical` (its first rule in `rules`).

  A function of the config alone, so parameter shapes built from it never depend on the device
  count: a mesh axis of size -1 ("the remaining devices") counts as 1 here, and a shape it then
  cannot split is refused by the trainer before training starts.
  """
  for name, axes in rules:
    if name == logical:
      axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
      return math.prod(max(config.mesh.get(axis, 1), 1) for axis in axes)
  return 1


def preset_fields(task: ml_collections.ConfigDict, presets: dict[str, dict]) -> dict:
  """The model preset `task.model`, with any field the task sets explicitly overriding it.

  Explicit means > 0 for sizes and >= 0 for dropouts: configs leave 0 / -1 for "the preset's".
  A preset feed-forward width (`hidden`) keeps its ratio to an explicit `features`, so
  setting `features` alone widens the whole model (as width sweeps and muP assume).
  """
  if task.model not in presets:
    raise ConfigError(f'task.model={task.model!r}: choose one of {", ".join(presets)}')
  preset = presets[task.model]
  fields = dict(preset)
  for name in fields:
    explicit = task[name] >= 0 if 'dropout' in name else task[name] > 0
    if explicit:
      fields[name] = task[name]
    if 'dropout' in name and not fields[name] < 1:  # a rate of 1 or more drops everything
      raise ConfigError(f'task.{name}={fields[name]} must be in [0, 1)')
  if 'hidden' in fields and task.hidden <= 0:
    fields['hidden'] = preset['hidden'] * fields['features'] // preset['features']
  return fields


def parameter_roles(params, rules: Sequence[tuple[str, str]]):
  """The role of every parameter (a tree like `params`), by the first rule whose regex fully
  matches its '/'-joined path; fails naming a parameter no rule matches."""
  def role(path, _):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    for pattern, value in rules:
      if value not in ROLES:
        raise ConfigError(f'parameter role {value!r} (rule {pattern!r}): choose one of {", ".join(ROLES)}')
      if re.fullmatch(pattern, name):
        return value
    raise ConfigError(f'parameter {name} has no width role: add a rule to the task\'s parameter_roles')
  return jax.tree_util.tree_map_with_path(role, params)
