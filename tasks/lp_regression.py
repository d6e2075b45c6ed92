"""l_p regression with an optionally over-parameterized depth-N linear model.

Arora, Cohen & Hazan (ICML 2018), "On the Optimization of Deep Networks:
Implicit Acceleration by Overparameterization": for p > 2, replacing the weight
vector w by a product W_1 W_2 ... W_N (same expressiveness) can make gradient
descent converge faster, because depth acts as a preconditioner. Compare
`task.depth=1` with 2 or 3 under SGD / Adam / Shampoo.

With `task.activation` tanh or relu between the layers the model is an MLP of
`task.width` hidden units: the narrow-to-wide model of the width-transfer (muP)
experiments, where the first layer is the input, the last the read-out.

Data: the UCI gas-sensor regression set the paper used (`data/gas_sensor.py`),
or, with `task.generate=True`, a generated set in the same file format. The model
takes `task.num_features` features; `prepare_data` refuses data with another count.
"""

import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from errors import ConfigError
from data import batches, gas_sensor
from tasks import losses
from tasks.base import Task, abstract_global_batch


ACTIVATIONS = {'linear': lambda x: x, 'tanh': nn.tanh, 'relu': nn.relu}


class DeepLinear(nn.Module):
  """x -> x W_1 ... W_N (with `activation` between), hidden width `width`; depth 1 is linear regression."""
  depth: int
  width: int
  init_scale: float
  activation: str = 'linear'

  @nn.compact
  def __call__(self, x):
    # Kernel axes (in, out); a hidden-to-hidden kernel's input axis is 'hidden_in' (one name per array).
    axes = [('features', 'hidden')] + [('hidden_in', 'hidden')] * (self.depth - 2) + [('hidden', 'output')]
    if self.depth == 1:
      axes = [('features', 'output')]
    sizes = [self.width] * (self.depth - 1) + [1]
    for layer, size in enumerate(sizes):
      init = nn.initializers.variance_scaling(self.init_scale ** 2, 'fan_in', 'normal')
      if layer:
        x = ACTIVATIONS[self.activation](x)
      x = nn.Dense(size, use_bias=False, name=f'layer{layer}',
                   kernel_init=nn.with_logical_partitioning(init, axes[layer]))(x)
    return x[:, 0]


class LpRegression(Task):
  logical_axis_rules = (('batch', 'data'), ('features', 'model'), ('hidden', 'model'), ('hidden_in', None),
                        ('output', None))
  eval_metric_names = ('loss', 'mse')

  def __init__(self, config):
    super().__init__(config)
    task = config.task
    if task.p < 2:
      raise ConfigError(f'task.p={task.p} must be >= 2')
    if task.depth < 1:
      raise ConfigError(f'task.depth={task.depth} must be >= 1')
    if task.activation not in ACTIVATIONS:
      raise ConfigError(f'task.activation={task.activation!r}: choose one of {", ".join(ACTIVATIONS)}')
    if task.num_features < 1:
      raise ConfigError(f'task.num_features={task.num_features} must be positive')
    if task.width < 0:
      raise ConfigError(f'task.width={task.width} must be >= 0 (0 = the number of features)')
    if not 0 < task.eval_fraction < 1:
      raise ConfigError(f'task.eval_fraction={task.eval_fraction} must be in (0, 1): both splits need examples')
    if task.num_examples < 1:
      raise ConfigError(f'task.num_examples={task.num_examples} must be positive')
    last = task.depth - 1
    self.parameter_roles = ((r'layer0/kernel', 'input' if last else 'fixed'),
                            (f'layer{last}/kernel', 'output'), (r'layer\d+/kernel', 'hidden'))
    self.data_dir = os.path.join(config.data_dir, task.dataset)
    self.model = DeepLinear(task.depth, task.width or task.num_features, task.init_scale, task.activation)
    self._splits = None

  def _load(self):
    if self._splits is None:
      task = self.config.task
      if not gas_sensor.find_files(self.data_dir):
        if not task.generate:
          raise ConfigError(
              f'no gas-sensor data in {self.data_dir}: unpack the UCI "Gas Sensor Array Drift" '
              f'batch*.dat files there, or use a :tiny config (which generates data)')
        gas_sensor.generate(self.data_dir, task.num_examples, task.num_features, seed=task.data_seed)
      splits = gas_sensor.standardized_splits(self.data_dir, task.eval_fraction, task.data_seed)
      num_features = splits[0]['x'].shape[1]
      if num_features != task.num_features:
        raise ConfigError(f'the data in {self.data_dir} has {num_features} features, but '
                          f'task.num_features={task.num_features}: set task.num_features={num_features}')
      num_train = len(splits[0]['y'])
      if num_train < self.config.global_batch_size:
        raise ConfigError(f'the data in {self.data_dir} leaves {num_train} training examples at '
                          f'task.eval_fraction={task.eval_fraction}, fewer than '
                          f'global_batch_size={self.config.global_batch_size}')
      self._splits = splits
    return self._splits

  def prepare_data(self):
    self._load()

  def abstract_batch(self, split):
    return abstract_global_batch(self.config, split, {'x': ((self.config.task.num_features,), np.float32),
                                                      'y': ((), np.float32)})

  @property
  def width(self) -> int:
    return self.model.width

  def init(self, rng):
    variables = self.model.init(rng, jnp.zeros((1, self.config.task.num_features), jnp.float32))
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

  def train_data(self, process_index, process_count, start_step, position=None):
    train, _ = self._load()
    return batches.train_batches(train, self.config.global_batch_size, self.config.seed,
                                 start_step, process_index, process_count)

  def eval_data(self, process_index, process_count):
    _, evaluation = self._load()
    return batches.eval_batches(evaluation, self.config.eval_batch_size, process_index, process_count)
