"""ResNet v1.5 image classification on ImageNet (He et al. 2016; v1.5 as in MLPerf's reference).

v1.5: in a bottleneck block the stride sits on the 3x3 convolution, not the first 1x1.
Batch norm (momentum 0.9, epsilon 1e-5) keeps its running statistics in the model
state; in training its batch statistics are means over the whole global batch: the
step is one jitted function over arrays sharded along the `data` axis, so XLA
reduces them across devices (synchronized batch norm, equal to one device's). The
last batch norm of every residual branch starts with scale 0, so each block starts
as the identity (Goyal et al. 2017). Training loss: cross-entropy with label
smoothing; evaluation: the plain cross-entropy, top-1 and top-5 accuracy over the
whole validation split.

Depths are presets (`task.model`): 18, 34 (basic blocks), 50, 101, 152 (bottleneck),
and `tiny`, one basic block per stage, for CPU. `task.stem`: `imagenet` (7x7/2
convolution and 3x3/2 max pool) or `small` (one 3x3/1 convolution, no pool), which
keeps enough resolution for 32-pixel images.

Data: tfds `imagenet2012` in a tfds data_dir (data/imagenet.py); with
`task.generate` a small set of the same form is written there first
(data/synthetic_imagenet.py). The head has `task.num_classes` outputs (ImageNet's
1000); `prepare_data` refuses data written with another number of classes.
"""

import dataclasses
import functools
import os

import flax.linen as nn
import jax.numpy as jnp
import optax

from errors import ConfigError
from data import imagenet, synthetic_imagenet
from tasks import losses
from tasks.base import Task, abstract_global_batch, width_ratio

BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # MLPerf's reference (as PyTorch's 0.1 / 1e-5)
STEMS = ('imagenet', 'small')
DTYPES = ('float32', 'bfloat16')

# (blocks per stage, block type); the four stages have width, 2x, 4x, 8x channels (x4 in bottlenecks).
MODELS = {
    'tiny': ((1, 1, 1, 1), 'basic'),
    '18': ((2, 2, 2, 2), 'basic'),
    '34': ((3, 4, 6, 3), 'basic'),
    '50': ((3, 4, 6, 3), 'bottleneck'),
    '101': ((3, 4, 23, 3), 'bottleneck'),
    '152': ((3, 8, 36, 3), 'bottleneck'),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  stage_sizes: tuple[int, ...]
  block: str        # basic | bottleneck
  width: int        # channels of the stem and the first stage (64 in the paper)
  num_classes: int
  stem: str = 'imagenet'
  dtype: str = 'float32'  # activations; parameters, batch statistics and the loss stay float32
  width_ratio: float = 1.0  # width / base_width under muP, else 1


def _conv(features: int, kernel: int, strides: int, dtype, name: str, init_scale: float = 1.0) -> nn.Conv:
  """He-normal (fan-out) initialised convolution without bias: batch norm follows every one."""
  init = nn.with_logical_partitioning(nn.initializers.variance_scaling(2.0 * init_scale ** 2, 'fan_out', 'normal'),
                                      ('conv_height', 'conv_width', 'conv_in', 'conv_out'))
  return nn.Conv(features, (kernel, kernel), (strides, strides), padding=[(kernel // 2, kernel // 2)] * 2,
                 use_bias=False, dtype=dtype, kernel_init=init, name=name)


def _batch_norm(train: bool, dtype, name: str, zero_scale: bool = False) -> nn.BatchNorm:
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
                      scale_init=nn.with_logical_partitioning(scale_init, ('conv_out',)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('conv_out',)), name=name)


class Block(nn.Module):
  """A residual block: two 3x3 convolutions (basic) or 1x1, 3x3 (strided), 1x1 x4 (bottleneck)."""
  features: int
  strides: int
  bottleneck: bool
  dtype: str

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(_batch_norm, train, self.dtype)
    if self.bottleneck:
      shapes = [(self.features, 1, 1), (self.features, 3, self.strides), (4 * self.features, 1, 1)]
    else:
      shapes = [(self.features, 3, self.strides), (self.features, 3, 1)]
    y = x
    for i, (features, kernel, strides) in enumerate(shapes):
      y = _conv(features, kernel, strides, self.dtype, f'conv{i}')(y)
      last = i == len(shapes) - 1
      y = norm(f'norm{i}', zero_scale=last)(y)
      if not last:
        y = nn.relu(y)
    if x.shape != y.shape:  # projection shortcut where the shape changes
      x = norm('shortcut_norm')(_conv(y.shape[-1], 1, self.strides, self.dtype, 'shortcut_conv')(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, images, train: bool):
    c = self.config
    x = images.astype(c.dtype)
    kernel, strides = (7, 2) if c.stem == 'imagenet' else (3, 1)
    # Under muP the stem (an input weight) keeps the base width's init and the head (the read-out) gets
    # a fan-in scaled one, which optimizers/parameterization.py's read-out multiplier takes for granted.
    stem = _conv(c.width, kernel, strides, c.dtype, 'stem_conv', init_scale=c.width_ratio ** 0.5)
    x = nn.relu(_batch_norm(train, c.dtype, 'stem_norm')(stem(x)))
    if c.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(c.stage_sizes):
      for i in range(num_blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = Block(c.width * 2 ** stage, strides, c.block == 'bottleneck', c.dtype,
                  name=f'stage{stage}_block{i}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    head = nn.Dense(c.num_classes, dtype=c.dtype, name='head',
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.01 * c.width_ratio ** -0.5),
                                                             ('conv_out', 'classes')),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('classes',)))
    return head(x).astype(jnp.float32)


def _correct_in_top_k(logits, labels, k: int):
  """1 where fewer than k logits exceed the label's (a tie goes to the label)."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=1)
  return (jnp.sum(logits > label_logit, axis=1) < k).astype(jnp.float32)


class ImageClassification(Task):
  # Data parallel: every parameter is replicated (convolutions are small next to activations).
  logical_axis_rules = (('batch', 'data'), ('conv_height', None), ('conv_width', None), ('conv_in', None),
                        ('conv_out', None), ('classes', None))
  eval_metric_names = ('loss', 'accuracy', 'top5_accuracy')
  parameter_roles = ((r'stem_conv/kernel', 'input'), (r'head/kernel', 'output'), (r'head/bias', 'fixed'),
                     (r'.*kernel', 'hidden'), (r'.*', 'input'))

  def __init__(self, config):
    super().__init__(config)
    task = config.task
    if task.model not in MODELS:
      raise ConfigError(f'task.model={task.model!r}: choose one of {", ".join(MODELS)}')
    if task.stem not in STEMS:
      raise ConfigError(f'task.stem={task.stem!r}: choose one of {", ".join(STEMS)}')
    if task.dtype not in DTYPES:
      raise ConfigError(f'task.dtype={task.dtype!r}: choose one of {", ".join(DTYPES)}')
    if task.width <= 0 or task.image_size <= 0 or task.num_classes <= 0:
      raise ConfigError(f'task.width={task.width}, task.image_size={task.image_size} and '
                        f'task.num_classes={task.num_classes} must be positive')
    if not 0 <= task.label_smoothing < 1:
      raise ConfigError(f'task.label_smoothing={task.label_smoothing} must be in [0, 1)')
    if task.max_eval_examples < 0:
      raise ConfigError(f'task.max_eval_examples={task.max_eval_examples} must be >= 0 (0 = the whole split)')
    self.data_dir = os.path.join(os.path.expanduser(config.data_dir), os.path.expanduser(task.tfds_dir))
    stage_sizes, block = MODELS[task.model]
    self.model = ResNet(ModelConfig(stage_sizes, block, task.width, task.num_classes, task.stem, task.dtype,
                                    width_ratio(config, task.width)))

  def _prepared(self) -> str:
    """The tfds data_dir, the synthetic set generated into it first where the config says so."""
    task = self.config.task
    if task.generate:
      synthetic_imagenet.prepare_tiny(self.data_dir, task.generated_classes, task.generated_train_per_class,
                                      task.generated_eval_per_class, task.data_seed)
    imagenet.check_prepared(self.data_dir)
    return self.data_dir

  def prepare_data(self):
    classes = imagenet.num_classes(self._prepared())
    if classes != self.config.task.num_classes:
      raise ConfigError(f'task.num_classes={self.config.task.num_classes}, but the data in {self.data_dir} '
                        f'has {classes} classes: set task.num_classes={classes} or point task.tfds_dir at '
                        f'data with {self.config.task.num_classes}')

  def abstract_batch(self, split):
    task = self.config.task
    return abstract_global_batch(self.config, split, {'image': ((task.image_size, task.image_size, 3), task.dtype),
                                                      'label': ((), jnp.int32)})

  @property
  def width(self) -> int:
    return self.config.task.width

  def train_data(self, process_index, process_count, start_step, position=None):
    task = self.config.task
    return imagenet.train_batches(self._prepared(), self.config.global_batch_size, task.image_size,
                                  self.config.seed, start_step, process_index, process_count, task.dtype,
                                  position)

  def eval_data(self, process_index, process_count):
    task = self.config.task
    return imagenet.eval_batches(self._prepared(), self.config.eval_batch_size, task.image_size, process_index,
                                 process_count, task.max_eval_examples, task.dtype)

  def init(self, rng):
    images = jnp.zeros((1, self.config.task.image_size, self.config.task.image_size, 3), jnp.float32)
    variables = self.model.init(rng, images, train=False)
    return variables['params'], {'batch_stats': variables['batch_stats']}

  def loss(self, params, model_state, batch, rng):
    logits, updates = self.model.apply({'params': params, **model_state}, batch['image'], train=True,
                                        mutable=['batch_stats'])
    loss = losses.softmax_cross_entropy(logits, batch['label'], label_smoothing=self.config.task.label_smoothing)
    accuracy = jnp.mean(_correct_in_top_k(logits, batch['label'], 1))
    return loss, ({'batch_stats': updates['batch_stats']}, {'accuracy': accuracy})

  def evaluate(self, params, model_state, batch):
    logits = self.model.apply({'params': params, **model_state}, batch['image'], train=False)
    labels, weight = batch['label'], batch['weight']
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top5 = min(5, logits.shape[-1])
    return {'loss': jnp.sum(cross_entropy * weight),
            'accuracy': jnp.sum(_correct_in_top_k(logits, labels, 1) * weight),
            'top5_accuracy': jnp.sum(_correct_in_top_k(logits, labels, top5) * weight),
            'count': jnp.sum(weight)}

