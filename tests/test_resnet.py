"""ResNet: the v1.5 architecture's size, batch norm in training and evaluation, tiny training, sharding."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimizers
import trainer
from errors import ConfigError
from conftest import assert_sharded_run_matches_one_device, load_config
from tasks.resnet import MODELS, ImageClassification, ModelConfig, ResNet

# A small generated set through the real generator and tfds reader: 4 classes, 16-pixel crops.
SMALL = dict(task__tfds_dir='synthetic_imagenet_small', task__generated_classes=4, task__num_classes=4,
             task__generated_train_per_class=64, task__generated_eval_per_class=16, task__image_size=16,
             task__width=8, global_batch_size=32, eval_batch_size=32, schedule__warmup_steps=2)


def tiny_model(**overrides) -> ResNet:
  fields = dict(stage_sizes=MODELS['tiny'][0], block='basic', width=8, num_classes=5, stem='small')
  return ResNet(ModelConfig(**{**fields, **overrides}))


@pytest.fixture(scope='module')
def tiny_variables():
  """Initialised once (compiling the initialisers is most of these tests' time)."""
  init = jax.jit(tiny_model().init, static_argnames='train')
  return init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)


def test_resnet50_has_the_reference_size():
  """25,557,032 parameters with 1000 classes (He et al.'s ResNet-50, as torchvision counts it)."""
  stage_sizes, block = MODELS['50']
  model = ResNet(ModelConfig(stage_sizes, block, width=64, num_classes=1000))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
  params = nn.unbox(variables['params'])
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == 25_557_032
  # v1.5: the stride-2 convolution of a downsampling bottleneck is its 3x3, not its first 1x1.
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)), train=False), variables)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  assert params['stage1_block0']['conv1']['kernel'].shape == (3, 3, 128, 128)


def test_each_residual_branch_starts_at_zero(tiny_variables):
  params = nn.unbox(tiny_variables['params'])
  for stage in range(4):
    block = params[f'stage{stage}_block0']
    assert np.all(block['norm1']['scale'] == 0) and np.all(block['norm0']['scale'] == 1)
  assert set(tiny_variables['batch_stats']['stem_norm']) == {'mean', 'var'}


def test_batch_norm_statistics_update_in_training_and_are_frozen_in_eval(tiny_variables):
  model, variables = tiny_model(), tiny_variables
  images = jax.random.normal(jax.random.PRNGKey(1), (6, 16, 16, 3)) * 2.0 + 3.0
  train_step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  _, updates = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats', 'intermediates'],
      capture_intermediates=lambda module, _: module.name == 'stem_conv'))(variables, images)
  # Running statistics <- 0.9 running + 0.1 batch statistics of the stem convolution's outputs.
  stem_out = np.asarray(updates.pop('intermediates')['stem_conv']['__call__'][0], np.float64)
  before, after = variables['batch_stats']['stem_norm'], updates['batch_stats']['stem_norm']
  assert np.all(before['mean'] == 0) and np.all(before['var'] == 1)
  np.testing.assert_allclose(after['mean'], 0.1 * stem_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(after['var'], 0.9 + 0.1 * stem_out.var(axis=(0, 1, 2)), rtol=1e-4)
  # Evaluation uses the running statistics: an image's logits do not depend on the rest of its batch.
  trained = {'params': variables['params'], **updates}
  alone, together = evaluate(trained, images[:2]), evaluate(trained, images)
  np.testing.assert_allclose(alone, together[:2], rtol=1e-5, atol=1e-6)
  # ... while training normalizes by the batch's own statistics.
  (alone_train, _), (together_train, _) = train_step(trained, images[:2]), train_step(trained, images)
  assert not np.allclose(alone_train, together_train[:2], atol=1e-4)


def test_bfloat16_activations_keep_float32_parameters_and_logits(tiny_variables):
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  low = tiny_model(dtype='bfloat16')
  shapes = jax.eval_shape(lambda: low.init(jax.random.PRNGKey(0), images, train=False))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(shapes)))
  logits = jax.jit(lambda v: low.apply(v, images, train=False))(tiny_variables)
  assert logits.dtype == jnp.float32
  full = jax.jit(lambda v: tiny_model().apply(v, images, train=False))(tiny_variables)
  np.testing.assert_allclose(logits, full, atol=0.05)


def test_tiny_training_lowers_loss(tmp_path):
  """From chance (loss log 4 at the 0.01-scale head) to well above it on 4 generated classes."""
  config = load_config('resnet50_sgd', **dict(SMALL, num_steps=80, eval_every=80, schedule__warmup_steps=5,
                                              optimizer__learning_rate=0.1))
  summary = trainer.run(config, str(tmp_path / 'run'), 'resnet50_sgd', devices=jax.devices()[:1])
  final = summary['final_eval']
  assert summary['status'] == 'completed'
  assert set(final) == {'loss', 'accuracy', 'top5_accuracy'}
  assert final['top5_accuracy'] == 1.0  # 4 classes: the label is always among the top 5
  assert final['loss'] < math.log(4) - 0.3 and final['accuracy'] > 0.5


def test_synchronized_batch_norm_on_8_devices_matches_one(tmp_path):
  """data=8: every device holds 4 of the 32 examples, and batch norm still sees all of them."""
  assert_sharded_run_matches_one_device('resnet50_sgd', tmp_path, data=8, model=1,
                                        **dict(SMALL, num_steps=3, eval_every=3, log_every=1))


def test_bad_settings_are_refused_before_training(tmp_path):
  for field, value, message in (('model', '7', 'task.model'), ('stem', 'cifar', 'task.stem'),
                                ('dtype', 'float16', 'task.dtype'), ('label_smoothing', 1.0, 'label_smoothing'),
                                ('num_classes', 0, 'task.num_classes=0')):
    with pytest.raises(ConfigError, match=message):
      ImageClassification(load_config('resnet50_sgd', **{f'task__{field}': value}))
  with pytest.raises(ConfigError, match='tfds build imagenet2012'):
    trainer.run(load_config('resnet50_sgd', 'paper', data_dir=str(tmp_path)), str(tmp_path / 'run'), 'resnet50_sgd')
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('optimizer', ['shampoo', 'sgd', 'lars', 'adam', 'adagrad', 'kfac'])
def test_configs_hold_the_papers_setting(optimizer):
  tiny, paper = (load_config(f'resnet50_{optimizer}', size) for size in ('tiny', 'paper'))
  assert (paper.task.model, paper.task.image_size, paper.global_batch_size) == ('50', 224, 32768)
  # Warm-up: the Shampoo recipe's 196 steps; LARS: MLPerf's 25 epochs of 39 steps; SGD: Goyal et al.'s 5 epochs.
  warmup = {'lars': 975}.get(optimizer, 196)
  assert (paper.schedule.warmup_steps, paper.schedule.decay, paper.schedule.power) == (warmup, 'polynomial', 2.0)
  assert paper.target == ('accuracy', 0.759, 'above') and paper.optimizer.weight_decay == 1e-4
  assert paper.num_steps == (1729 if optimizer == 'shampoo' else 2512)
  assert paper.task.num_classes == 1000 and tiny.task.num_classes == tiny.task.generated_classes
  for config in (tiny, paper):
    if not optimizers.needs_loss(optimizer):
      optimizers.build(config.optimizer, optimizers.schedules.build(config.schedule, 1.0, config.num_steps))
  if optimizer == 'shampoo':
    expected = dict(learning_rate=13.0, beta1=0.95, beta2=0.85, matrix_epsilon=1.5e-5, start_preconditioning_step=25,
                    preconditioning_compute_steps=1, block_size=128, graft_type='sgd', nesterov=True,
                    exponent_override=4)
    assert {k: paper.optimizer[k] for k in expected} == expected
  if optimizer in ('sgd', 'lars'):
    assert paper.optimizer.learning_rate == {'sgd': 12.8, 'lars': 31.2}[optimizer]
