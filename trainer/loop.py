"""train_and_evaluate: one task, one optimizer, one workdir.

Everything that can be wrong with the config is checked before the workdir is
touched. The train step is compiled ahead of time (its compile time is
measured apart from training), runs on a `jax.sharding.Mesh` with params and
optimizer state placed by the task's logical axis names, and donates its
state. Metrics are fetched once per log window, which is also where a
non-finite loss is caught: no checkpoint is ever written from a diverged state.
"""

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import signal
from typing import Any, Sequence

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
from trainer import diagnostics, partitioning, timing, workdir as workdirs, writers
from trainer.checkpoints import Checkpointer

# Steps dispatched ahead of the host. Enough to keep a device busy; unbounded
# queues starve XLA's CPU collectives (a rendezvous times out on 8 simulated devices).
MAX_STEPS_IN_FLIGHT = 2
COMPLETED, REACHED_TARGET, DIVERGED, INTERRUPTED = 'completed', 'reached_target', 'diverged', 'interrupted'
DIRECTIONS = ('above', 'below')


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
  example = next(task.train_data(0, 1, 0))
  batch = {k: jax.ShapeDtypeStruct((config.global_batch_size,) + v.shape[1:], v.dtype)
           for k, v in example.items()}
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


def _make_train_step(task, tx, schedule, accum_steps: int, mesh, state_metrics=None):
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
    grads, model_state, metrics = compute(state.params, state.model_state, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   loss_args=(state.params, state.model_state, rng, batch))
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['learning_rate'] = schedule(state.step)
    if state_metrics is not None:
      metrics.update(state_metrics(opt_state))
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


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
  """SIGTERM / SIGINT ask the loop to checkpoint and stop after the current step.

  In a multi-process job the processes must stop at the same step (checkpointing and
  every step are collective), so they agree on it at log steps: a signal to any process
  stops them all at the next one.
  """

  def __init__(self, log_every: int):
    self.signal = None
    self._log_every = log_every
    self._previous = {}

  def requested(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signal is not None
    if step % self._log_every:
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


def run(config: ml_collections.ConfigDict, workdir: str, name: str,
        devices: Sequence[jax.Device] | None = None) -> dict:
  """Trains `config` in `workdir` (resuming from its checkpoint) and returns the summary.

  `devices` (default: all) is for tests and launchers that give a run a subset.
  """
  devices = list(devices or jax.devices())
  process_index, process_count = jax.process_index(), jax.process_count()
  is_main = process_index == 0

  # ---- Everything that can reject the config, before the workdir is touched.
  optimizers.parameterization.check(config)
  task = tasks.get(config.task.name)(config)
  target = Target.from_config(config.target, task.eval_metric_names)
  mesh_shape = partitioning.mesh_shape(config.mesh, len(devices))
  _check_steps_and_batch(config, mesh_shape, process_count)
  schedule = optimizers.schedules.build(config.schedule, config.optimizer.learning_rate,
                                        config.num_steps)
  mesh = partitioning.make_mesh(mesh_shape, devices)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  abstract_boxed = jax.eval_shape(task.init, init_rng)  # also loads (or generates) the data
  multipliers = width_multipliers(config, task, nn.unbox(abstract_boxed)[0])
  tx = optimizers.build(config.optimizer, schedule, loss_context(config, task, abstract_boxed), multipliers)
  diagnostics.check(config.diagnostics)
  workdirs.prepare(workdir, config, write=is_main)

  # ---- Shardings and the initial (or restored) state.
  timer = timing.RunTimer()
  param_shardings, model_state_shardings = partitioning.logical_shardings(
      abstract_boxed, mesh, task.logical_axis_rules)

  def init_state(rng) -> TrainState:
    params, model_state = nn.unbox(task.init(init_rng))
    if multipliers is not None:
      params = optimizers.parameterization.apply_init(params, multipliers.init)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), rng=rng)

  abstract_state = jax.eval_shape(init_state, train_rng)
  replicated = partitioning.replicated(mesh)
  state_shardings = TrainState(
      step=replicated, params=param_shardings, model_state=model_state_shardings,
      opt_state=partitioning.optimizer_state_shardings(
          abstract_state.opt_state, abstract_state.params, param_shardings, mesh),
      rng=replicated)
  checkpointer = Checkpointer(workdir, config.keep_checkpoints)
  meta = {'steps_to_target': None, 'train_seconds_to_target': None}
  if checkpointer.latest_step() is not None:
    abstract_sharded = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings)
    state, meta = checkpointer.restore(abstract_sharded)
    timer = timing.RunTimer(meta)
    logging.info('Resumed from step %d of %s', int(state.step), workdir)
  else:
    state = jax.jit(init_state, out_shardings=state_shardings)(train_rng)
  start_step = int(state.step)
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params))

  summary = {
      'name': name, 'size': config.size, 'task': config.task.name,
      'optimizer': config.optimizer.name, 'status': None, 'step': start_step,
      'target': dataclasses.asdict(target), 'final_eval': None, 'final_train': None,
      'devices': {'platform': devices[0].platform, 'kind': devices[0].device_kind,
                  'count': len(devices), 'process_count': process_count},
      'mesh': mesh_shape, 'param_count': num_params, 'width': _width(task), 'versions': _versions(),
  }
  stopped_at_target = config.stop_at_target and meta['steps_to_target'] is not None
  finished = start_step >= config.num_steps or stopped_at_target
  summary_path = os.path.join(workdir, workdirs.SUMMARY_FILE)
  if finished and os.path.exists(summary_path):
    checkpointer.close()
    logging.info('Run in %s is already finished at step %d; nothing to do', workdir, start_step)
    with open(summary_path) as f:
      return json.load(f)

  if is_main:
    writers.truncate_after(f'{workdir}/{writers.METRICS_FILE}', start_step)
  writer = writers.create(workdir, is_main, timer.totals)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in workdirs.flatten(config.to_dict()).items()
                          if isinstance(v, (int, float, str, bool))})

  # ---- Compile ahead of time, so the first step's compilation is not training time.
  batch_sharding = partitioning.batch_sharding(mesh)
  train_iter = task.train_data(process_index, process_count, start_step)
  first_batch = partitioning.global_batch(next(train_iter), batch_sharding)
  with timer.pause('compile'):
    train_step = jax.jit(
        _make_train_step(task, tx, schedule, config.grad_accum_steps, mesh,
                         optimizers.state_metrics(config.optimizer.name)
                         if config.log_optimizer_metrics else None),
        in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, replicated),
        donate_argnums=0).lower(state, first_batch).compile()
  compiled = {}

  def run_compiled(fn, out_sharding, state, batch):
    """fn(params, model_state, batch), compiled on first use (on the clock's compile time)."""
    if fn not in compiled:
      with timer.pause('compile'):
        compiled[fn] = jax.jit(fn, in_shardings=(param_shardings, model_state_shardings, batch_sharding),
                               out_shardings=out_sharding).lower(
                                   state.params, state.model_state, batch).compile()
    return compiled[fn](state.params, state.model_state, batch)

  def evaluate(state) -> dict[str, float]:
    sums = None
    for local_batch in task.eval_data(process_index, process_count):
      batch = partitioning.global_batch(local_batch, batch_sharding)
      out = run_compiled(task.evaluate, replicated, state, batch)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return task.eval_metrics({k: float(v) for k, v in jax.device_get(sums).items()})

  def decode_evaluate(state) -> dict[str, float]:
    """Metrics of generated outputs (e.g. BLEU of beam search): every process gets all rows."""
    indices, predictions = [], []
    for local_batch in task.decode_data(process_index, process_count):
      batch = partitioning.global_batch(local_batch, batch_sharding)
      out = run_compiled(task.predict, batch_sharding, state, batch)
      real = partitioning.to_host(batch['weight']) > 0
      indices.append(partitioning.to_host(batch['index'])[real])
      predictions.append(partitioning.to_host(out)[real])
    return task.decode_metrics(np.concatenate(indices), np.concatenate(predictions))

  def full_evaluate(state, step: int) -> dict[str, float]:
    metrics = evaluate(state)
    evals = step // config.eval_every
    if task.decode_every and (evals % task.decode_every == 0 or step == config.num_steps):
      metrics.update(decode_evaluate(state))
    return metrics

  diagnose = None
  if config.diagnostics.every:  # off: nothing is built or compiled
    diagnostic_batch = partitioning.global_batch(
        next(task.train_data(process_index, process_count, 0)), batch_sharding)
    with timer.pause('compile'):
      diagnose = jax.jit(
          diagnostics.build(task, config.diagnostics, config.optimizer),
          in_shardings=(param_shardings, model_state_shardings, state_shardings.opt_state, batch_sharding),
          out_shardings=replicated).lower(
              state.params, state.model_state, state.opt_state, diagnostic_batch).compile()

  def log_diagnostics(state, step: int) -> None:
    with timer.pause('diagnostics', state):
      values = jax.device_get(diagnose(state.params, state.model_state, state.opt_state, diagnostic_batch))
    writer.write_scalars(step, {f'diagnostics/{k}': v for k, v in values.items()})

  def save(state) -> None:
    with timer.pause('checkpoint', state):
      checkpointer.save(int(state.step), state, {**meta, **timer.totals()})

  status = None
  if finished:  # killed after its last checkpoint but before summary.json: rebuild the summary
    status = REACHED_TARGET if stopped_at_target else COMPLETED
    with timer.pause('eval'):
      summary['final_eval'] = full_evaluate(state, start_step)

  # ---- The loop.
  num_steps = config.num_steps
  flush_steps = {s for s in range(start_step + 1, num_steps + 1)
                 if s % config.eval_every == 0 or s % config.checkpoint_every == 0} | {num_steps}
  progress = _Progress(num_steps, config.log_every, flush_steps, enabled=is_main)
  window = []
  step = start_step
  if diagnose and step == 0:
    log_diagnostics(state, step)
  timer.start_training()
  progress(step, timer.train_seconds)
  with _StopRequest(config.log_every) as stop:
    batch = first_batch
    while status is None:
      state, metrics = train_step(state, batch)
      step += 1
      window.append(metrics)
      if len(window) > MAX_STEPS_IN_FLIGHT:
        window[-MAX_STEPS_IN_FLIGHT - 1]['loss'].block_until_ready()
      if step < num_steps:
        batch = partitioning.global_batch(next(train_iter), batch_sharding)
      stopping = stop.requested(step)
      if step % config.log_every == 0 or step in flush_steps or stopping:
        fetched = jax.device_get(window)
        window = []
        losses = np.array([m['loss'] for m in fetched])
        if not np.all(np.isfinite(losses)):
          bad = step - len(losses) + int(np.argmin(np.isfinite(losses)))
          summary['diverged_at_step'] = bad + 1
          status = DIVERGED
          break
        # Window means, except cumulative counters (`*_total`): their value at the window's end.
        means = {k: float(fetched[-1][k] if k.endswith('_total') else np.mean([m[k] for m in fetched]))
                 for k in fetched[0]}
        summary['final_train'] = means
        writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
        progress.loss = means['loss']
      progress(step, timer.train_seconds)
      if step % config.eval_every == 0 or step == num_steps:
        with timer.pause('eval', state):
          eval_metrics = full_evaluate(state, step)
        if not all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in eval_metrics.values()):
          summary['diverged_at_step'] = step  # a finite train loss can still evaluate to inf
          status = DIVERGED
          break
        summary['final_eval'] = eval_metrics
        writer.write_scalars(step, {f'eval/{k}': v for k, v in eval_metrics.items()})
        if meta['steps_to_target'] is None and target.reached(eval_metrics):
          meta['steps_to_target'] = step
          meta['train_seconds_to_target'] = timer.train_seconds
          if is_main:
            print(f'target {target.metric} {target.direction} {target.value:g} reached at step {step}',
                  flush=True)
        if meta['steps_to_target'] is not None and config.stop_at_target:
          status = REACHED_TARGET
      if diagnose and step % config.diagnostics.every == 0:
        log_diagnostics(state, step)
      if step % config.checkpoint_every == 0 or stopping or status or step == num_steps:
        save(state)
      if stopping and status is None:
        status = INTERRUPTED
        summary['signal'] = signal.Signals(stop.signal).name
      elif step == num_steps and status is None:
        status = COMPLETED
    timer.stop_training(state)
    checkpointer.close()
  writer.flush()
  writer.close()

  summary.update(status=status, step=step, steps_to_target=meta['steps_to_target'],
                 train_seconds_to_target=meta['train_seconds_to_target'],
                 last_checkpoint_step=checkpointer.last_saved_step, **timer.totals())
  if is_main:
    workdirs.write_json(summary_path, summary)
  return summary
