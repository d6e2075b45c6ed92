"""l_p regression with an optionally over-parameterized depth-N linear model.

Arora, Cohen & Hazan (ICML 2018), "On the Optimization of Deep Networks:
Implicit Acceleration by Overparameterization": for p > 2, replacing the weight
vector w by a product W_1 W_2 ... W_N (same expressiveness) can make gradient
descent converge faster, because depth acts as a preconditioner. Compare
`task.depth=1` with 2 or 3 under SGD / Adam / Shampoo.

Data: the UCI gas-sensor regression set the paper used (`data/gas_sensor.py`),
or, with `task.generate=True`, a generated set in the same file format.
"""

import os

import flax.linen as nn
import jax.numpy as jnp

from configs import ConfigError
from data import batches, gas_sensor
from tasks import losses
from tasks.base import Task


class DeepLinear(nn.Module):
  """x -> x W_1 ... W_N, with hidden width `width`; depth 1 is plain linear regression."""
  depth: int
  width: int
  init_scale: float

  @nn.compact
  def __call__(self, x):
    axes = ['features'] + ['hidden'] * (self.depth - 1) + ['output']
    sizes = [self.width] * (self.depth - 1) + [1]
    for layer, size in enumerate(sizes):
      init = nn.initializers.variance_scaling(self.init_scale ** 2, 'fan_in', 'normal')
      x = nn.Dense(size, use_bias=False, name=f'layer{layer}',
                   kernel_init=nn.with_logical_partitioning(init, (axes[layer], axes[layer + 1])))(x)
    return x[:, 0]


class LpRegression(Task):
  logical_axis_rules = (('batch', 'data'), ('features', 'model'), ('hidden', 'model'), ('output', None))
  eval_metric_names = ('loss', 'mse')

  def __init__(self, config):
    super().__init__(config)
    task = config.task
    if task.p < 2:
      raise ConfigError(f'task.p={task.p} must be >= 2')
    if task.depth < 1:
      raise ConfigError(f'task.depth={task.depth} must be >= 1')
    self.data_dir = os.path.join(config.data_dir, task.dataset)
    self._splits = None
    self.model = None  # built once the data says how many features there are

  def _load(self):
    if self._splits is None:
      task = self.config.task
      if not gas_sensor.find_files(self.data_dir):
        if not task.generate:
          raise ConfigError(
              f'no gas-sensor data in {self.data_dir}: unpack the UCI "Gas Sensor Array Drift" '
              f'batch*.dat files there, or use a :tiny config (which generates data)')
        gas_sensor.generate(self.data_dir, task.num_examples, task.num_features, seed=task.data_seed)
      self._splits = gas_sensor.standardized_splits(self.data_dir, task.eval_fraction, task.data_seed)
      num_features = self._splits[0]['x'].shape[1]
      self.model = DeepLinear(task.depth, task.width or num_features, task.init_scale)
    return self._splits

  def init(self, rng):
    train, _ = self._load()
    variables = self.model.init(rng, train['x'][:1])
    return variables['params'], {}

  def _residuals(self, params, batch):
    return self.model.apply({'params': params}, batch['x']) - batch['y']

  def loss(self, params, model_state, batch, rng):
    predictions = self.model.apply({'params': params}, batch['x'])
    loss = losses.lp_loss(predictions, batch['y'], self.config.task.p)
    return loss, (model_state, {'mse': jnp.mean((predictions - batch['y']) ** 2)})

  def evaluate(self, params, model_state, batch):
    r = self._residuals(params, batch)
    w = batch['weight']
    return {'loss': jnp.sum(w * jnp.abs(r) ** self.config.task.p),
            'mse': jnp.sum(w * r ** 2), 'count': jnp.sum(w)}

  def train_data(self, process_index, process_count, start_step):
    train, _ = self._load()
    return batches.train_batches(train, self.config.global_batch_size, self.config.seed,
                                 start_step, process_index, process_count)

  def eval_data(self, process_index, process_count):
    _, evaluation = self._load()
    return batches.eval_batches(evaluation, self.config.eval_batch_size, process_index, process_count)
