"""One-step coordinate check (Yang et al. 2022, "Tensor Programs V", Sec. D.1) on the MLP.

How large is the first update of each layer's output, as the width grows? muP is the
parameterization under which every layer's change stays Theta(1) in the width (feature
learning, no blow-up), which is what lets a learning rate tuned narrow transfer to wide.
`update_sizes` trains one step of a `lp_regression` config (depth >= 2, a non-linear
`task.activation` makes it an MLP) through the runner's own pieces (task, init and
learning-rate multipliers, optimizer chain, K-FAC's loss) and measures, on that step's
batch, the RMS change of every layer's output; `exponents` fits size ~ width^p. Under
muP p ~ 0 for every layer; under the standard parameterization some p is far from 0.
`bench/coord_check.py` prints the table for every optimizer.
"""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import optimizers
import tasks
from errors import ConfigError
from trainer import loop

# Per optimizer: its tiny lp_regression config, and the settings that make one step show its scaling
# (no momentum or EMA warm-up in the way; Shampoo ungrafted, so its own row applies, with whole-matrix
# statistics; K-FAC's factors from this batch alone, exact GGN).
OPTIMIZERS = {
    'sgd': ('sgd', dict(learning_rate=0.1)),
    'adam': ('adam', dict(learning_rate=1e-3)),
    'shampoo': ('shampoo', dict(learning_rate=1e-2, graft_type='none', start_preconditioning_step=0,
                                beta1=0.0, block_size=4096, merge_small_dims_block_size=1)),
    'shampoo_grafted': ('shampoo', dict(learning_rate=1e-3, graft_type='rmsprop_normalized',
                                        start_preconditioning_step=0, beta1=0.0, block_size=4096,
                                        merge_small_dims_block_size=1)),
    'kfac': ('kfac', dict(learning_rate=0.1, curvature_ema=0.0, estimation_mode='ggn_exact', momentum=0.0)),
}


def check_config(optimizer: str, parameterization: str, width: int, base_width: int) -> ml_collections.ConfigDict:
  """The coordinate check's config: a 3-layer tanh MLP (32 -> width -> width -> 1), squared error."""
  name, overrides = OPTIMIZERS[optimizer]
  config = importlib.import_module(f'configs.lp_regression_{name}').get_config('tiny')
  config.update_from_flattened_dict({
      'task.depth': 3, 'task.width': width, 'task.activation': 'tanh', 'task.p': 2, 'task.init_scale': 1.0,
      'global_batch_size': 64, 'parameterization': parameterization, 'base_width': base_width,
      **{f'optimizer.{k}': v for k, v in overrides.items()}})
  return config


def _layer_outputs(task, params, x) -> dict[str, jax.Array]:
  _, state = task.model.apply({'params': params}, x, capture_intermediates=True, mutable=['intermediates'])
  return {name: calls['__call__'][0] for name, calls in state['intermediates'].items() if name != '__call__'}


def update_sizes(config: ml_collections.ConfigDict) -> dict[str, float]:
  """RMS change of each layer's output (keyed by layer name) after one training step of `config`."""
  if config.task.name != 'lp_regression':
    raise ConfigError(f'the coordinate check runs on the lp_regression MLP, not {config.task.name!r}')
  optimizers.parameterization.check(config)
  task = tasks.get(config.task.name)(config)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  boxed = task.init(init_rng)
  params, model_state = nn.unbox(boxed)
  multipliers = loop.width_multipliers(config, task, params)
  if multipliers is not None:
    params = optimizers.parameterization.apply_init(params, multipliers.init)
  schedule = optimizers.schedules.build(config.schedule, config.optimizer.learning_rate, config.num_steps)
  tx = optimizers.build(config.optimizer, schedule, loop.loss_context(config, task, boxed),
                        multipliers)
  batch = {k: jnp.asarray(v) for k, v in next(task.train_data(0, 1, 0)).items()}

  @jax.jit
  def step(params):
    grads = jax.grad(lambda p: task.loss(p, model_state, batch, step_rng)[0])(params)
    updates, _ = tx.update(grads, tx.init(params), params, loss_args=(params, model_state, step_rng, batch))
    before = _layer_outputs(task, params, batch['x'])
    after = _layer_outputs(task, optax.apply_updates(params, updates), batch['x'])
    return {name: jnp.sqrt(jnp.mean((after[name] - before[name]) ** 2)) for name in before}

  return {name: float(size) for name, size in step(params).items()}


def exponents(widths, sizes: list[dict[str, float]]) -> dict[str, float]:
  """Per layer, p in size ~ width^p: the least-squares slope over the widths on log-log axes."""
  log_widths = np.log(np.asarray(widths, float))
  return {name: float(np.polyfit(log_widths, np.log([s[name] for s in sizes]), 1)[0]) for name in sizes[0]}
