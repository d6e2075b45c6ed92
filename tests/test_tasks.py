"""Every task builds its model and its batches' shapes from the config alone, and the data agrees.

Each task's tiny config (configs/<task>_adam.py) with a smaller generated set in a folder of its
own: the batches' shapes and dtypes are the tiny config's, only the amount of data differs.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from conftest import load_config
from errors import ConfigError
from data import wmt
from trainer import partitioning

SMALL_DATA = {
    'lp_regression': dict(task__dataset='gas_sensor_tasks'),
    'transformer': dict(task__tfds_dir='synthetic_wmt_tasks', task__generated_train_pairs=600,
                        task__generated_eval_pairs=16),
    'bert': dict(task__dataset='synthetic_bert_tasks', task__generated_documents=300),
    'dlrm': dict(task__dataset='synthetic_criteo_tasks', task__generated_train=2000, task__generated_eval=100),
    'resnet50': dict(task__tfds_dir='synthetic_imagenet_tasks', task__generated_train_per_class=8,
                     task__generated_eval_per_class=2),
}


def make_task(name: str, **overrides) -> tasks.Task:
  config = load_config(f'{name}_adam', **overrides)
  return tasks.get(config.task.name)(config)


def shapes(batch) -> dict:
  return {key: (tuple(array.shape), np.dtype(array.dtype)) for key, array in batch.items()}


@pytest.fixture(scope='module')
def small_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tasks_data'))


@pytest.mark.parametrize('name,overrides', [(name, {}) for name in sorted(SMALL_DATA)]
                         + [('resnet50', dict(task__dtype='bfloat16'))])  # bfloat16 images
def test_abstract_batches_are_the_first_batches_the_trainer_receives(name, overrides, small_data_dir):
  """Compared with the first train and eval batches as global arrays on a data=2 mesh."""
  task = make_task(name, data_dir=small_data_dir, **SMALL_DATA[name], **overrides)
  task.prepare_data()
  sharding = partitioning.batch_sharding(partitioning.make_mesh({'data': 2}, jax.devices()[:2]))
  for split, stream in (('train', task.train_data(0, 1, 0)), ('eval', task.eval_data(0, 1))):
    first = partitioning.global_batch(next(iter(stream)), sharding)
    assert shapes(task.abstract_batch(split)) == shapes(first), split


@pytest.mark.parametrize('name', sorted(SMALL_DATA))
def test_the_model_and_its_batches_need_no_data(name, tmp_path):
  """With no data and no generation, init and abstract_batch still work (a data read would fail) and write nothing."""
  task = make_task(name, data_dir=str(tmp_path / 'absent'), task__generate=False)
  params, _ = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  assert jax.tree.leaves(params)
  assert task.abstract_batch('train') and task.abstract_batch('eval')
  assert os.listdir(tmp_path) == []
  with pytest.raises(ConfigError, match="batch split 'test': choose one of train, eval"):
    task.abstract_batch('test')


@pytest.mark.parametrize('name,overrides,message', [
    ('resnet50', dict(task__num_classes=7), r'task.num_classes=7, but the data in \S+ has 10 classes'),
    ('lp_regression', dict(task__num_features=16), r'\S+ has 32 features, but task.num_features=16'),
    ('bert', dict(task__vocab_size=100), r'task.vocab_size=100 is smaller than the prepared data'),
])
def test_prepare_data_refuses_data_that_disagrees_with_the_config(name, overrides, message, small_data_dir):
  make_task(name, data_dir=small_data_dir, **SMALL_DATA[name]).prepare_data()
  task = make_task(name, data_dir=small_data_dir, **SMALL_DATA[name], **overrides, task__generate=False)
  with pytest.raises(ConfigError, match=message):
    task.prepare_data()


def test_prepare_data_refuses_a_tokenizer_larger_than_the_vocabulary(small_data_dir):
  task = make_task('transformer', data_dir=small_data_dir, **SMALL_DATA['transformer'])
  task.prepare_data()
  vocab_size = task.config.task.vocab_size
  small = make_task('transformer', data_dir=small_data_dir, **SMALL_DATA['transformer'], task__vocab_size=50)
  os.link(wmt.tokenizer_path(task.data_dir, vocab_size), wmt.tokenizer_path(small.data_dir, 50))
  with pytest.raises(ConfigError, match=r'spm_50.model has \d+ pieces, more than task.vocab_size=50'):
    small.prepare_data()


def test_a_bfloat16_embedding_lookup_stays_bfloat16():
  """The lookup's scale must not promote the residual stream to float32 (twice its memory)."""
  from tasks import layers
  embed = layers.Embed(vocab_size=10, num_embeddings=128, features=8, dtype=jnp.bfloat16)
  ids = jnp.arange(4)[None]
  params = embed.init(jax.random.PRNGKey(0), ids)
  assert embed.apply(params, ids).dtype == jnp.bfloat16
