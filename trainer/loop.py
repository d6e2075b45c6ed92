"""train_and_evaluate: one task, one optimizer, one workdir.

Everything that can be wrong with the config is checked before the workdir is
touched. The train step is compiled ahead of time (its compile time is
measured apart from training), runs on a `jax.sharding.Mesh` with params and
optimizer state placed by the task's logical axis names, and donates its
state. Metrics are fetched once per log window, which is also where a
non-finite loss is caught, and the state is checked finite before each save
(one small jitted reduction): no checkpoint is ever written from a diverged state.
SIGTERM and SIGINT are caught from the start of a run, so that one during set-up
or compilation stops it as cleanly as one during training.
"""

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import signal
from typing import Any, Callable, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

import optimizers
import tasks
from errors import ConfigError
from trainer import diagnostics, distributed, partitioning, prefetch, timing, workdir as workdirs, writers
from trainer.checkpoints import Checkpointer

# Steps dispatched ahead of the host. Enough to keep a device busy; unbounded
# queues starve XLA's CPU collectives (a rendezvous times out on 8 simulated devices).
MAX_STEPS_IN_FLIGHT = 2
COMPLETED, REACHED_TARGET, DIVERGED, INTERRUPTED = 'completed', 'reached_target', 'diverged', 'interrupted'
DIRECTIONS = ('above', 'below')
AT_WINDOW_END = ('_total', '_share')  # metrics logged at their window-end value, not the window mean
FAILED_ROOTS_WARNING = 0.1  # share of a refresh's roots that failed, above which the run warns once
# Optimizer-state fields that hold non-finite values by design, as records the updates do not use:
# Shampoo's root_errors (inf: that root failed) and K-FAC's rho (NaN before its first adaptation).
NON_FINITE_BY_DESIGN = ('root_errors', 'rho')
# A checkpoint's meta field: every process's input stream position at its step (a resume seeks there).
DATA_POSITIONS = 'data_positions'


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Target:
  metric: str
  value: float
  direction: str

  @classmethod
  def from_config(cls, target, metric_names: Sequence[str]) -> 'Target':
    if len(target) != 3:
      raise ConfigError(f'target={target!r}: expected (metric, value, "above" | "below")')
    metric, value, direction = target
    if metric not in metric_names:
      raise ConfigError(f'target metric {metric!r} is not an eval metric of this task '
                        f'({", ".join(metric_names)})')
    if direction not in DIRECTIONS:
      raise ConfigError(f'target direction {direction!r}: choose "above" or "below"')
    return cls(metric, float(value), direction)

  def reached(self, metrics: dict[str, float]) -> bool:
    if self.metric not in metrics:  # e.g. BLEU, computed only every few evaluations
      return False
    value = metrics[self.metric]
    return value >= self.value if self.direction == 'above' else value <= self.value


def _check_finite(config: ml_collections.ConfigDict) -> None:
  """Every float setting must be a number: a NaN learning rate or scale trains nothing, silently."""
  for key, value in workdirs.flatten(config.to_dict()).items():
    if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
      raise ConfigError(f'{key}={value} must be a finite number')


def _check_data_dir(data_dir: str) -> None:
  """Tasks make their data folders under data_dir: a file there would fail deep in a reader."""
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise ConfigError(f'data_dir={data_dir} exists and is not a directory')


def _check_seed(seed: int) -> None:
  """A PRNG key holds 32 bits of the seed and numpy's shuffles refuse negative ones: outside
  [0, 2**32) a seed would alias another run's or fail only once data flows."""
  if not 0 <= seed < 2 ** 32:
    raise ConfigError(f'seed={seed} must be in [0, 2**32)')


def _check_steps_and_batch(config, mesh_shape: dict[str, int], process_count: int) -> None:
  for field in ('num_steps', 'eval_every', 'log_every', 'checkpoint_every', 'keep_checkpoints',
                'global_batch_size', 'eval_batch_size', 'grad_accum_steps'):
    if config[field] < 1:
      raise ConfigError(f'{field}={config[field]} must be >= 1')
  data = mesh_shape[partitioning.BATCH_AXIS]
  micro, remainder = divmod(config.global_batch_size, config.grad_accum_steps)
  if remainder or micro % data:
    raise ConfigError(f'global_batch_size={config.global_batch_size} must split into '
                      f'grad_accum_steps={config.grad_accum_steps} micro-batches each divisible by '
                      f'the data axis ({data} devices)')
  for field in ('global_batch_size', 'eval_batch_size'):
    if config[field] % math.lcm(process_count, data):
      raise ConfigError(f'{field}={config[field]} is not divisible by the process count '
                        f'({process_count}) and the data axis ({data})')


def loss_context(config, task, abstract_boxed) -> optimizers.kfac.LossContext | None:
  """The task loss for optimizers that estimate curvature from it (K-FAC), else None."""
  if not optimizers.needs_loss(config.optimizer.name):
    return None
  if config.grad_accum_steps > 1:
    raise ConfigError(
        f'optimizer {config.optimizer.name!r} with grad_accum_steps={config.grad_accum_steps}: its '
        f'curvature pass runs forward and backward over the whole batch at once, which would undo '
        f'the memory saving of accumulation; use grad_accum_steps=1')
  params, model_state = nn.unbox(abstract_boxed)
  batch = task.abstract_batch('train')
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
  return optimizers.kfac.LossContext(
      value_fn=lambda params, model_state, rng, batch: task.loss(params, model_state, batch, rng)[0],
      example_args=(params, model_state, rng, batch), task_name=config.task.name)


def _width(task) -> int | None:
  """The model's width (what muP scales by), or None for a task that declares none."""
  try:
    return task.width
  except ConfigError:
    return None


def width_multipliers(config, task, params) -> optimizers.parameterization.Multipliers | None:
  """Per-parameter init, learning-rate and damping multipliers under parameterization=mup, else None.

  Logs each parameter's role and multipliers, so a run shows what muP did to it.
  """
  if config.parameterization != 'mup':
    return None
  roles = tasks.base.parameter_roles(params, task.parameter_roles)
  ratio = tasks.base.width_ratio(config, task.width)
  multipliers = optimizers.parameterization.multipliers(config, params, roles, ratio)
  logging.info('muP: width %d = %.4g x base_width %d; per parameter: %s', task.width, ratio, config.base_width,
               '; '.join(optimizers.parameterization.describe(roles, multipliers)))
  return multipliers


def _sparse_tables(config, task, abstract_params):
  """A tree like the parameters, True at the task's embedding tables: their looked-up rows get
  config.embedding_updates' row rule (optimizers/embeddings.py), the optimizer the rest."""
  if optimizers.needs_loss(config.optimizer.name):
    raise ConfigError(f'embedding_updates.rule={config.embedding_updates.rule!r}: {config.optimizer.name} '
                      f'estimates curvature from the loss of every parameter; use rule dense')
  if config.grad_accum_steps > 1:
    raise ConfigError(f'embedding_updates.rule={config.embedding_updates.rule!r} takes one batch a step: '
                      f'set grad_accum_steps=1 (it is {config.grad_accum_steps})')
  _, _, lookups = jax.eval_shape(task.gather_rows, abstract_params, task.abstract_batch('train'))
  return jax.tree.map(lambda _, ids: ids is not None, abstract_params, lookups, is_leaf=lambda x: x is None)


def _make_train_step(task, tx, schedule, accum_steps: int, mesh, state_metrics, sparse_tables: bool):
  grad_fn = jax.value_and_grad(task.loss, has_aux=True)

  def loss_and_grads(params, model_state, batch, rng):
    (loss, (model_state, metrics)), grads = grad_fn(params, model_state, batch, rng)
    return grads, model_state, {'loss': loss, **metrics}

  def accumulated(params, model_state, batch, rng):
    # Micro-batch i holds rows i, i + accum, ...: each stays on the device that holds the row.
    micro = jax.tree.map(lambda x: x.reshape((-1, accum_steps) + x.shape[1:]).swapaxes(0, 1), batch)
    micro = jax.lax.with_sharding_constraint(
        micro, NamedSharding(mesh, PartitionSpec(None, partitioning.BATCH_AXIS)))

    def body(carry, inputs):
      grad_sum, model_state = carry
      index, micro_batch = inputs
      grads, model_state, metrics = loss_and_grads(
          params, model_state, micro_batch, jax.random.fold_in(rng, index))
      return (jax.tree.map(jnp.add, grad_sum, grads), model_state), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grad_sum, model_state), metrics = jax.lax.scan(
        body, (zeros, model_state), (jnp.arange(accum_steps), micro))
    grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
    return grads, model_state, jax.tree.map(lambda m: m.mean(0), metrics)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    compute = loss_and_grads if accum_steps == 1 else accumulated
    params, loss_batch, extra = state.params, batch, {}
    if sparse_tables:  # differentiated at the looked-up rows: a table's gradient is a row per lookup
      params, loss_batch, extra['lookups'] = task.gather_rows(state.params, batch)
    grads, model_state, metrics = compute(params, state.model_state, loss_batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   loss_args=(state.params, state.model_state, rng, batch), **extra)
    params = optimizers.embeddings.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['learning_rate'] = schedule(state.step)
    metrics.update(state_metrics(opt_state))
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def _warn_on_failed_roots(means: dict[str, float], step: int) -> bool:
  """Warns (and returns True) when more than FAILED_ROOTS_WARNING of the latest refresh failed."""
  for key, share in means.items():
    if key.endswith('_refresh_failed_share') and share > FAILED_ROOTS_WARNING:
      name = key.removesuffix('_refresh_failed_share')
      graft = means.get(f'{name}_graft_share', math.nan)
      print(f'warning: {share:.0%} of {name}\'s roots failed at its latest refresh (by step {step}) and kept '
            f'their previous ones; {graft:.0%} of its blocks never got a root and follow the graft alone '
            f'(metrics.jsonl: {name}_*)', flush=True)
      return True
  return False


class _Progress(periodic_actions.PeriodicAction):
  """Console line every `log_every` steps; its clock is train-seconds, so eval pauses it."""

  def __init__(self, num_steps: int, every_steps: int, on_steps, enabled: bool):
    super().__init__(every_steps=every_steps, on_steps=on_steps)
    self._num_steps = num_steps
    self._enabled = enabled
    self.loss = math.nan

  def _should_trigger(self, step, t):
    return step != self._previous_step and super()._should_trigger(step, t)

  def _apply(self, step, t):
    steps_per_sec = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
    eta = (self._num_steps - step) / steps_per_sec
    if self._enabled:
      print(f'step {step}/{self._num_steps}  loss {self.loss:.6g}  {steps_per_sec:.1f} steps/s  '
            f'ETA {periodic_actions._format_secs(eta)}', flush=True)


class _StopRequest:
  """SIGTERM / SIGINT ask the run to stop: before training at the end of restoring or compiling,
  during training after the current step, with a checkpoint.

  In a multi-process job the processes must stop at the same step (checkpointing and
  every step are collective), so they agree on it where all of them ask together: before
  training and at log steps. A signal to any process stops them all.
  """

  def __init__(self):
    self.signal = None
    self._previous = {}

  def requested(self, agree: bool = True) -> bool:
    """Whether to stop now; in a multi-process job only where every process asks (`agree`)."""
    if jax.process_count() == 1:
      return self.signal is not None
    if not agree:
      return False
    self.signal = int(multihost_utils.process_allgather(np.int32(self.signal or 0)).max()) or None
    return self.signal is not None

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _versions() -> dict[str, str]:
  packages = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'clu', 'numpy')
  return {'python': platform.python_version(),
          **{name: importlib.metadata.version(name) for name in packages}}


class Intervals(NamedTuple):
  """How long to train and how often to log, evaluate, checkpoint and diagnose."""
  num_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  diagnostics_every: int  # 0: off
  stop_at_target: bool


class Shardings(NamedTuple):
  state: TrainState
  params: Any
  model_state: Any
  batch: NamedSharding
  replicated: NamedSharding


@dataclasses.dataclass(frozen=True)
class Setup:
  """The config resolved once into what the loop needs; nothing after `set_up` reads the config."""
  task: tasks.Task
  target: Target
  intervals: Intervals
  mesh: jax.sharding.Mesh
  shardings: Shardings
  abstract_state: TrainState
  optimized_params: Any       # abstract_state.params as config.optimizer sees them: None at sparse tables
  init_state: Callable[[jax.Array], TrainState]
  train_rng: jax.Array
  train_step: Callable        # (state, batch) -> (state, metrics), not yet compiled
  diagnose: Callable | None   # (params, model_state, opt_state, batch) -> metrics, or None when off
  async_roots: optimizers.shampoo.AsyncRoots | None  # Shampoo's roots computed beside the steps, or None
  keep_checkpoints: int
  summary: dict               # summary.json's fields that hold for the whole run


class Steps(NamedTuple):
  """The compiled programs of a run and the data they start on."""
  train: Callable
  train_data: Any             # data.batches.Stream: this process's training batches after the first
  first_batch: dict
  first_position: Any         # this process's stream position after the first batch
  evaluate: Callable          # (state, step) -> eval metrics (decoding included when due)
  diagnose: Callable | None   # state -> diagnostics, or None when off
  first_non_finite: Callable  # state -> path of its first non-finite leaf ('params/dense/kernel'), or None


def set_up(config: ml_collections.ConfigDict, devices: Sequence[jax.Device], name: str,
           with_data: bool = True) -> Setup:
  """Everything that can reject the config, before the workdir is touched.

  `with_data=False` (the planner) needs no data: the model and batches are built from the config.
  """
  _check_finite(config)
  optimizers.parameterization.check(config)
  task = tasks.get(config.task.name)(config)
  target = Target.from_config(config.target, task.eval_metric_names)
  mesh = partitioning.make_mesh(config.mesh, devices)
  _check_steps_and_batch(config, dict(mesh.shape), len({d.process_index for d in devices}))
  _check_seed(config.seed)
  diagnostics.check(config.diagnostics)
  schedule = optimizers.schedules.build(config.schedule, config.optimizer.learning_rate, config.num_steps)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  abstract_boxed = jax.eval_shape(task.init, init_rng)  # from the config alone: reads no data
  multipliers = width_multipliers(config, task, nn.unbox(abstract_boxed)[0])
  tx = optimizers.build(config.optimizer, schedule, loss_context(config, task, abstract_boxed), multipliers,
                        stack_sharding=partitioning.stack_sharding(mesh))
  optimizers.embeddings.check(config.embedding_updates)
  tables = (_sparse_tables(config, task, nn.unbox(abstract_boxed)[0])
            if optimizers.embeddings.is_sparse(config.embedding_updates) else None)
  if tables is not None:
    tx = optimizers.embeddings.sparse_rows(tx, tables, config.embedding_updates, optimizers.schedules.build(
        config.schedule, config.embedding_updates.learning_rate, config.num_steps))
  if with_data:  # after the optimizer's checks: a bad setting is refused before any data is generated
    _check_data_dir(os.path.expanduser(config.data_dir))
    task.prepare_data()  # the data exists (generated where the config says so) and agrees with the config

  def init_state(rng) -> TrainState:
    params, model_state = nn.unbox(task.init(init_rng))
    if multipliers is not None:
      params = optimizers.parameterization.apply_init(params, multipliers.init)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), rng=rng)

  abstract_state = jax.eval_shape(init_state, train_rng)
  param_shardings, model_state_shardings = partitioning.logical_shardings(
      abstract_boxed, mesh, task.logical_axis_rules)
  replicated = partitioning.replicated(mesh)
  shardings = Shardings(
      state=TrainState(step=replicated, params=param_shardings, model_state=model_state_shardings,
                       opt_state=partitioning.optimizer_state_shardings(
                           abstract_state.opt_state, abstract_state.params, param_shardings, mesh),
                       rng=replicated),
      params=param_shardings, model_state=model_state_shardings,
      batch=partitioning.batch_sharding(mesh), replicated=replicated)
  optimized = (abstract_state.params if tables is None  # what config.optimizer updates
               else jax.tree.map(lambda p, table: None if table else p, abstract_state.params, tables))
  state_metrics = optimizers.state_metrics(config.optimizer.name, config.log_optimizer_metrics)
  devices = list(devices)
  return Setup(
      task=task, target=target, mesh=mesh, shardings=shardings, abstract_state=abstract_state,
      optimized_params=optimized,
      init_state=init_state, train_rng=train_rng,
      intervals=Intervals(config.num_steps, config.log_every, config.eval_every, config.checkpoint_every,
                          config.diagnostics.every, config.stop_at_target),
      train_step=_make_train_step(task, tx, schedule, config.grad_accum_steps, mesh, state_metrics,
                                  tables is not None),
      diagnose=(diagnostics.build(task, config.diagnostics, config.optimizer)
                if config.diagnostics.every else None),
      async_roots=optimizers.async_roots(config.optimizer, optimized, shardings.state.opt_state,
                                         partitioning.stack_sharding(mesh)),
      keep_checkpoints=config.keep_checkpoints,
      summary={
          'name': name, 'size': config.size, 'task': config.task.name, 'optimizer': config.optimizer.name,
          'target': dataclasses.asdict(target),
          'devices': {'platform': devices[0].platform, 'kind': devices[0].device_kind,
                      'count': len(devices), 'process_count': jax.process_count()},
          'mesh': dict(mesh.shape),
          'param_count': sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params)),
          'width': _width(task), 'versions': _versions()})


def restore_or_init(setup: Setup, checkpointer: Checkpointer) -> tuple[TrainState, dict, timing.RunTimer]:
  """The latest checkpoint's state, target bookkeeping and timers; or a fresh state."""
  if checkpointer.latest_step() is None:
    state = jax.jit(setup.init_state, out_shardings=setup.shardings.state)(setup.train_rng)
    return state, {'steps_to_target': None, 'train_seconds_to_target': None}, timing.RunTimer()
  abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  setup.abstract_state, setup.shardings.state)
  state, meta = checkpointer.restore(abstract_sharded)
  logging.info('Resumed from step %d', int(state.step))
  return state, meta, timing.RunTimer(meta)


def finite_check(setup: Setup, state: TrainState) -> Callable[[TrainState], str | None]:
  """state -> the path of its first non-finite float leaf, or None; one jitted reduction per leaf,
  fetched as one vector of flags. Leaves in NON_FINITE_BY_DESIGN are not checked."""
  flat = jax.tree_util.tree_flatten_with_path(setup.abstract_state)[0]
  checked = [i for i, (path, leaf) in enumerate(flat) if jnp.issubdtype(leaf.dtype, jnp.inexact)
             and not any(getattr(key, 'name', None) in NON_FINITE_BY_DESIGN for key in path)]
  names = [jax.tree_util.keystr(flat[i][0], simple=True, separator='/') for i in checked]

  def non_finite(state):
    leaves = jax.tree.leaves(state)
    return jnp.stack([jnp.logical_not(jnp.all(jnp.isfinite(leaves[i]))) for i in checked])

  compiled = jax.jit(non_finite, in_shardings=(setup.shardings.state,),
                     out_shardings=setup.shardings.replicated).lower(state).compile()

  def first_non_finite(state) -> str | None:
    flags = jax.device_get(compiled(state))
    return names[int(np.argmax(flags))] if flags.any() else None
  return first_non_finite


def _kept_position(meta: dict):
  """This process's data position from a checkpoint's meta, or None (none kept, or kept for
  another number of processes, whose shares differ: the reader replays instead)."""
  positions = meta.get(DATA_POSITIONS)
  if positions is None or len(positions) != jax.process_count():
    if positions is not None:
      logging.warning('the checkpoint kept data positions for %d processes, not %d: replaying the input '
                      'stream to the step instead', len(positions), jax.process_count())
    return None
  return positions[jax.process_index()]


def compile_steps(setup: Setup, state: TrainState, timer: timing.RunTimer, meta: dict) -> Steps:
  """Compiles ahead of time, so that compilation is never charged to training."""
  task, shardings, intervals = setup.task, setup.shardings, setup.intervals
  process_index, process_count = jax.process_index(), jax.process_count()
  train_data = task.train_data(process_index, process_count, int(state.step), _kept_position(meta))
  first_batch = partitioning.global_batch(next(train_data), shardings.batch)
  first_position = train_data.position
  with timer.pause('compile'):
    train = jax.jit(setup.train_step, in_shardings=(shardings.state, shardings.batch),
                    out_shardings=(shardings.state, shardings.replicated), donate_argnums=0,
                    ).lower(state, first_batch).compile()
  evaluate = _Evaluator(task, shardings, timer, intervals)
  diagnose = None
  if setup.diagnose is not None:
    diagnostic_batch = partitioning.global_batch(next(task.train_data(process_index, process_count, 0)),
                                                 shardings.batch)
    with timer.pause('compile'):
      compiled = jax.jit(
          setup.diagnose,
          in_shardings=(shardings.params, shardings.model_state, shardings.state.opt_state, shardings.batch),
          out_shardings=shardings.replicated).lower(
              state.params, state.model_state, state.opt_state, diagnostic_batch).compile()
    diagnose = lambda state: compiled(state.params, state.model_state, state.opt_state, diagnostic_batch)
  with timer.pause('compile'):
    first_non_finite = finite_check(setup, state)
  return Steps(train, train_data, first_batch, first_position, evaluate, diagnose, first_non_finite)


class _Evaluator:
  """Eval metrics summed over the eval split, plus decoded metrics (BLEU) when they are due.

  Each evaluation function is compiled on first use, on the clock's compile time.
  """

  def __init__(self, task, shardings: Shardings, timer: timing.RunTimer, intervals: Intervals):
    self._task, self._shardings, self._timer, self._intervals = task, shardings, timer, intervals
    self._compiled = {}

  def __call__(self, state: TrainState, step: int) -> dict[str, float]:
    metrics = self._evaluate(state)
    evals = step // self._intervals.eval_every
    decode_every = self._task.decode_every
    if decode_every and (evals % decode_every == 0 or step == self._intervals.num_steps):
      metrics.update(self._decode(state))
    return metrics

  def _run(self, fn, out_sharding, state, batch):
    if fn not in self._compiled:
      with self._timer.pause('compile'):
        self._compiled[fn] = jax.jit(
            fn, in_shardings=(self._shardings.params, self._shardings.model_state, self._shardings.batch),
            out_shardings=out_sharding).lower(state.params, state.model_state, batch).compile()
    return self._compiled[fn](state.params, state.model_state, batch)

  def _batches(self, data):
    for local_batch in data(jax.process_index(), jax.process_count()):
      yield partitioning.global_batch(local_batch, self._shardings.batch)

  def _evaluate(self, state) -> dict[str, float]:
    sums = None
    for batch in self._batches(self._task.eval_data):
      out = self._run(self._task.evaluate, self._shardings.replicated, state, batch)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return self._task.eval_metrics({k: float(v) for k, v in jax.device_get(sums).items()})

  def _decode(self, state) -> dict[str, float]:
    """Metrics of generated outputs (e.g. BLEU of beam search): every process gets all rows."""
    indices, predictions = [], []
    for batch in self._batches(self._task.decode_data):
      out = self._run(self._task.predict, self._shardings.batch, state, batch)
      real = partitioning.to_host(batch['weight']) > 0
      indices.append(partitioning.to_host(batch['index'])[real])
      predictions.append(partitioning.to_host(out)[real])
    return self._task.decode_metrics(np.concatenate(indices), np.concatenate(predictions))


def train(setup: Setup, steps: Steps, state: TrainState, meta: dict, timer: timing.RunTimer,
          writer, checkpointer: Checkpointer, summary: dict, stop: _StopRequest) -> tuple[TrainState, int, str]:
  """The step loop, from `state` until the run completes, reaches its target (when asked to stop
  there), diverges or is interrupted; returns (state, step, status).

  Updates `meta` (the target bookkeeping a checkpoint keeps) and `summary` (final metrics,
  where it diverged and on what, which signal stopped it).
  """
  intervals, target, is_main = setup.intervals, setup.target, jax.process_index() == 0
  roots = setup.async_roots
  num_steps, step = intervals.num_steps, int(state.step)
  flush_steps = {s for s in range(step + 1, num_steps + 1)
                 if s % intervals.eval_every == 0 or s % intervals.checkpoint_every == 0} | {num_steps}
  progress = _Progress(num_steps, intervals.log_every, flush_steps, enabled=is_main)

  def log_diagnostics(state, step: int) -> None:
    with timer.pause('diagnostics', state):
      values = jax.device_get(steps.diagnose(state))
    writer.write_scalars(step, {f'diagnostics/{k}': v for k, v in values.items()})

  def diverged(at_step: int, metric: str | None, leaf: str | None) -> str:
    summary.update(diverged_at_step=at_step, non_finite_metric=metric, non_finite_leaf=leaf)
    return DIVERGED

  status, window, warned_roots = None, [], False
  if steps.diagnose and step == 0:
    log_diagnostics(state, step)
  timer.start_training()
  progress(step, timer.train_seconds)
  batch, after_batch = steps.first_batch, steps.first_position
  positioned = ((batch, steps.train_data.position) for batch in steps.train_data)
  place = lambda item: (partitioning.global_batch(item[0], setup.shardings.batch), item[1])
  with contextlib.closing(prefetch.Prefetcher(positioned, place, count=num_steps - step - 1)) as batches:
    while status is None:
      if roots is not None:
        state = state.replace(opt_state=roots.before_update(state.opt_state, step))
      state, metrics = steps.train(state, batch)
      data_position = after_batch  # where the input stands for the next step
      if roots is not None:
        roots.after_update(state.opt_state, step)
      step += 1
      window.append(metrics)
      if len(window) > MAX_STEPS_IN_FLIGHT:
        window[-MAX_STEPS_IN_FLIGHT - 1]['loss'].block_until_ready()
      if step < num_steps:
        (batch, after_batch), waited = batches.get()
        timer.seconds[timing.INPUT_WAIT] += waited
      stopping = stop.requested(agree=step % intervals.log_every == 0)
      if step % intervals.log_every == 0 or step in flush_steps or stopping:
        fetched = jax.device_get(window)
        window = []
        losses = np.array([m['loss'] for m in fetched])
        if not np.all(np.isfinite(losses)):
          bad = step - len(losses) + int(np.argmin(np.isfinite(losses)))
          status = diverged(bad + 1, 'train/loss', steps.first_non_finite(state))
          break
        # Window means, except counters and optimizer-state shares: their value at the window's end.
        means = {k: float(fetched[-1][k] if k.endswith(AT_WINDOW_END) else np.mean([m[k] for m in fetched]))
                 for k in fetched[0]}
        summary['final_train'] = means
        writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
        progress.loss = means['loss']
        if is_main and not warned_roots and _warn_on_failed_roots(means, step):
          warned_roots = True
      progress(step, timer.train_seconds)
      if step % intervals.eval_every == 0 or step == num_steps:
        with timer.pause('eval', state):
          eval_metrics = steps.evaluate(state, step)
        non_finite = [k for k, v in eval_metrics.items() if not np.isfinite(np.asarray(v, dtype=np.float64)).all()]
        if non_finite:  # a finite train loss can still evaluate to inf
          status = diverged(step, f'eval/{non_finite[0]}', steps.first_non_finite(state))
          break
        summary['final_eval'] = eval_metrics
        writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_metrics.items()})
        if meta['steps_to_target'] is None and target.reached(eval_metrics):
          meta['steps_to_target'] = step
          meta['train_seconds_to_target'] = timer.train_seconds
          if is_main:
            print(f'target {target.metric} {target.direction} {target.value:g} reached at step {step}',
                  flush=True)
        if meta['steps_to_target'] is not None and intervals.stop_at_target:
          status = REACHED_TARGET
      if steps.diagnose and step % intervals.diagnostics_every == 0:
        log_diagnostics(state, step)
      if step % intervals.checkpoint_every == 0 or stopping or status or step == num_steps:
        with timer.pause('checkpoint', state):
          leaf = steps.first_non_finite(state)
          if leaf is None:
            saved = state if roots is None else state.replace(opt_state=roots.to_save(state.opt_state))
            positions = distributed.every_process(data_position)
            checkpointer.save(step, saved, {**meta, **timer.totals(), DATA_POSITIONS: positions})
        if leaf is not None:  # finite losses, but an update since the last save left a non-finite value
          status = diverged(step, None, leaf)
          break
      if stopping and status is None:
        status = INTERRUPTED
        summary['signal'] = signal.Signals(stop.signal).name
      elif step == num_steps and status is None:
        status = COMPLETED
  timer.stop_training(state)
  return state, step, status


@contextlib.contextmanager
def _before_training():
  """A write the disk refuses before training is a workdir the run cannot use: a ConfigError, as for
  a workdir that is not writable."""
  try:
    yield
  except workdirs.WriteError as e:
    raise ConfigError(str(e)) from None


def _quietly(close: Callable[[], None]) -> None:
  """Closes after an error: a write failing then (the disk refusing again) adds nothing to it."""
  with contextlib.suppress(workdirs.WriteError):
    close()


def run(config: ml_collections.ConfigDict, workdir: str, name: str,
        devices: Sequence[jax.Device] | None = None) -> dict:
  """Trains `config` in `workdir` (resuming from its checkpoint) and returns the summary.

  `devices` (default: all) is for tests and launchers that give a run a subset. A SIGTERM or
  SIGINT before training (set-up, restore, compilation) ends the run once restored or compiled,
  with status `interrupted` at the step it started from.

  Raises:
    ConfigError: the config, the devices or the workdir cannot serve the run (a write the disk
      refused before training included); nothing was trained.
    workdirs.WriteError: the disk refused a write during training; the run stopped, and the
      checkpoints saved before stay.
  """
  with _StopRequest() as stop:
    # ---- Set up: the config is checked and resolved once; only then is the workdir written.
    setup = set_up(config, list(devices or jax.devices()), name)
    is_main = jax.process_index() == 0
    # One run per workdir: the lock is held until the run returns (or dies).
    with workdirs.locked(workdir, enabled=is_main):
      with _before_training():
        workdirs.prepare(workdir, config, write=is_main)
        checkpointer = Checkpointer(workdir, setup.keep_checkpoints)
      try:
        return _train_in(workdir, config, setup, checkpointer, stop, is_main)
      except workdirs.WriteError as e:  # closed by now: the last saved step is the last good one
        last = checkpointer.last_saved_step
        kept = f'last good checkpoint: step {last}' if last is not None else 'no checkpoint saved yet'
        raise workdirs.WriteError(f'{e}; {kept} in {workdir}') from None


def _train_in(workdir: str, config: ml_collections.ConfigDict, setup: Setup, checkpointer: Checkpointer,
              stop: _StopRequest, is_main: bool) -> dict:
  """`run` from the locked, checked workdir on: restore, compile, train, summarize."""
  with contextlib.ExitStack() as on_error:
    on_error.callback(_quietly, checkpointer.close)
    # ---- Restore, or initialize.
    with _before_training():
      state, meta, timer = restore_or_init(setup, checkpointer)
    start_step = int(state.step)
    stopped_at_target = setup.intervals.stop_at_target and meta['steps_to_target'] is not None
    finished = start_step >= setup.intervals.num_steps or stopped_at_target
    summary_path = os.path.join(workdir, workdirs.SUMMARY_FILE)
    if finished and os.path.exists(summary_path):
      on_error.pop_all()
      checkpointer.close()
      logging.info('Run in %s is already finished at step %d; nothing to do', workdir, start_step)
      with open(summary_path) as f:
        return json.load(f)
    with _before_training():
      if is_main:
        writers.truncate_after(f'{workdir}/{writers.METRICS_FILE}', start_step)
      writer = writers.create(workdir, is_main, timer.totals)
      on_error.callback(_quietly, writer.close)
      if start_step == 0:
        writer.write_hparams({k: v for k, v in workdirs.flatten(config.to_dict()).items()
                              if isinstance(v, (int, float, str, bool))})

    # ---- Compile, then train (or, killed after its last checkpoint but before summary.json,
    # evaluate once more to rebuild the summary). A signal before training stops the run here.
    summary = {**setup.summary, 'status': None, 'step': start_step, 'final_eval': None, 'final_train': None}
    steps = None if stop.requested() else compile_steps(setup, state, timer, meta)
    step = start_step
    if stop.requested():
      status = INTERRUPTED
      summary['signal'] = signal.Signals(stop.signal).name
    elif finished:
      status = REACHED_TARGET if stopped_at_target else COMPLETED
      with timer.pause('eval'):
        summary['final_eval'] = steps.evaluate(state, start_step)
    else:
      state, step, status = train(setup, steps, state, meta, timer, writer, checkpointer, summary, stop)

    on_error.pop_all()  # from here on a close that fails is the error

  # ---- Finish: wait for the last checkpoint, close the writers, write summary.json.
  try:
    checkpointer.close()
  except workdirs.WriteError:
    _quietly(writer.close)
    raise
  writer.flush()
  writer.close()
  summary.update(status=status, step=step, steps_to_target=meta['steps_to_target'],
                 train_seconds_to_target=meta['train_seconds_to_target'],
                 last_checkpoint_step=checkpointer.last_saved_step, **timer.totals())
  if is_main:
    workdirs.write_json(summary_path, summary)
  return summary
