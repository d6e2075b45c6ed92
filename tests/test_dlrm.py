"""DLRM: the forward pass against NumPy, tables row-sharded over the whole mesh, tiny training, config checks."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

import trainer
from errors import ConfigError
from conftest import assert_sharded_run_matches_one_device, load_config
from data import criteo
from tasks.dlrm import ClickThrough, Dlrm, ModelConfig

# A small generated set through the real generator and TSV reader; tables of 2 x vocabulary.
SMALL = dict(task__generated_train=24_000, task__generated_eval=3000, task__dataset='synthetic_criteo_small',
             task__embedding_dim=8, task__bottom_mlp=(16,), task__top_mlp=(16,), eval_batch_size=1024)


def numpy_dlrm(params, dense, sparse, config: ModelConfig):
  """The reference forward pass, written out: bottom MLP, lookups, upper-triangle dots, top MLP."""
  relu = lambda x: np.maximum(x, 0.0)
  layer = lambda x, p: x @ np.asarray(p['kernel'], np.float64) + np.asarray(p['bias'], np.float64)
  x = np.asarray(dense, np.float64)
  for i in range(len(config.bottom_mlp) + 1):
    x = relu(layer(x, params[f'bottom_{i}']))
  vectors = [x] + [np.asarray(params[f'table_{i}'], np.float64)[sparse[:, i]] for i in range(len(config.table_sizes))]
  features = [x]
  for i in range(len(vectors)):
    for j in range(i + 1, len(vectors)):
      features.append(np.sum(vectors[i] * vectors[j], axis=1, keepdims=True))
  z = np.concatenate(features, axis=1)
  for i in range(len(config.top_mlp)):
    z = relu(layer(z, params[f'top_{i}']))
  return layer(z, params[f'top_{len(config.top_mlp)}'])[:, 0]


def test_forward_pass_matches_numpy():
  config = ModelConfig(table_sizes=(5, 300, 2), embedding_dim=4, bottom_mlp=(6,), top_mlp=(7, 3))
  rng = np.random.default_rng(0)
  dense = rng.standard_normal((9, criteo.NUM_DENSE)).astype(np.float32)
  sparse = np.stack([rng.integers(0, n, 9) for n in config.table_sizes], axis=1).astype(np.int32)
  # Only 3 tables: the model takes as many as table_sizes names (the task checks for 26).
  params = nn.unbox(Dlrm(config).init(jax.random.PRNGKey(0), dense, sparse)['params'])
  assert [params[f'table_{i}'].shape[0] for i in range(3)] == [128, 3 * 128, 128]
  wide = dataclasses.replace(config, row_multiple=4096)  # the paper's: any power-of-two mesh up to 4096 devices
  shapes = jax.eval_shape(Dlrm(wide).init, jax.random.PRNGKey(0), dense, sparse)['params']
  assert [nn.unbox(shapes)[f'table_{i}'].shape[0] for i in range(3)] == [4096] * 3
  assert np.abs(params['table_1']).max() <= 1 / np.sqrt(300)  # uniform(+-1/sqrt(rows)), as the reference
  logits = Dlrm(config).apply({'params': params}, dense, sparse)
  np.testing.assert_allclose(logits, numpy_dlrm(params, dense, sparse, config), rtol=1e-4, atol=1e-5)


def test_tiny_training_beats_the_constant_predictor(tmp_path):
  """Log loss below the constant predictor's on the eval split, and an exact AUC near the data's ceiling."""
  config = load_config('dlrm_adam', **SMALL, num_steps=300, eval_every=150)
  summary = trainer.run(config, str(tmp_path / 'run'), 'dlrm_adam', devices=jax.devices()[:1])
  with open(os.path.join(os.environ['SHAMPOO_DATA_DIR'], 'synthetic_criteo_small', 'bayes.json')) as f:
    bayes = json.load(f)
  final = summary['final_eval']
  assert summary['status'] == 'completed'
  assert set(final) == {'loss', 'log_loss', 'auc'} and final['loss'] == final['log_loss']
  assert final['log_loss'] < bayes['constant_log_loss'] - 0.02
  assert 0.65 < final['auc'] < bayes['auc'] + 0.02


def test_row_sharded_tables_match_a_single_device(tmp_path):
  """data=2 x model=4: every table split row-wise over all 8 devices; the run equals one device's."""
  one, eight = assert_sharded_run_matches_one_device('dlrm_adam', tmp_path, data=2, model=4,
                                                     **dict(SMALL, num_steps=4, eval_every=4, log_every=2))
  np.testing.assert_allclose(eight['final_eval']['auc'], one['final_eval']['auc'], atol=1e-4)


def test_tables_are_sharded_row_wise_over_the_whole_mesh():
  task = ClickThrough(load_config('dlrm_adam', **SMALL))
  boxed, _ = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  mesh = trainer.partitioning.make_mesh({'data': 2, 'model': 4}, jax.devices())
  shardings = trainer.partitioning.logical_shardings(boxed, mesh, task.logical_axis_rules)
  for i in range(criteo.NUM_SPARSE):
    assert shardings[f'table_{i}'].spec == jax.sharding.PartitionSpec(('data', 'model'), None)
  assert shardings['top_0']['kernel'].spec == jax.sharding.PartitionSpec(None, None)
  # Rows padded to a multiple of 128 do not split over 6 devices: one line naming the table.
  six = trainer.partitioning.make_mesh({'data': 2, 'model': 3}, jax.devices()[:6])
  with pytest.raises(ConfigError, match=r"parameter table_\d+ of shape \(\d+, 8\) .* 'data' x 'model' \(size 6\)"):
    trainer.partitioning.logical_shardings(boxed, six, task.logical_axis_rules)


def test_bad_settings_are_refused_before_training(tmp_path):
  with pytest.raises(ConfigError, match='26'):
    ClickThrough(load_config('dlrm_adam', task__table_sizes=(10,) * 25))
  with pytest.raises(ConfigError, match='task.row_multiple=0'):
    ClickThrough(load_config('dlrm_adam', task__row_multiple=0))
  with pytest.raises(ConfigError, match='criteo_1tb'):
    trainer.run(load_config('dlrm_adam', 'paper', data_dir=str(tmp_path)), str(tmp_path / 'run'), 'dlrm_adam')
  assert not (tmp_path / 'run').exists()


def test_tiny_tables_have_twice_the_generated_vocabularies():
  from configs import _dlrm
  from data import synthetic_criteo
  assert _dlrm.TINY_TABLE_SIZES == tuple(2 * v + 1 for v in synthetic_criteo.VOCAB_SIZES)


def test_the_paper_run_is_one_epoch_of_criteo_1tb():
  """Days 0-22 of Criteo 1TB hold 4,195,197,692 training examples: the paper run passes over each once."""
  config = load_config('dlrm_adam', 'paper')
  examples = 4_195_197_692
  assert (config.num_steps - 1) * config.global_batch_size < examples <= config.num_steps * config.global_batch_size


@pytest.mark.parametrize('cache_bytes, reads', [(2**30, 1), (1000, 3)])
def test_the_eval_split_is_parsed_once_per_run_when_it_fits(monkeypatch, cache_bytes, reads):
  """An evaluation reads the split twice (log loss, then the AUC's predictions); parsed rows that
  fit are kept, and give the same batches; larger ones are streamed at every pass."""
  monkeypatch.setattr('tasks.dlrm.EVAL_CACHE_BYTES', cache_bytes)
  parsed = []
  eval_batches = criteo.eval_batches
  monkeypatch.setattr(criteo, 'eval_batches', lambda *args: parsed.append(args) or eval_batches(*args))
  task = ClickThrough(load_config('dlrm_adam', **SMALL))
  task.prepare_data()
  first = list(task.eval_data(0, 1))
  again = list(task.eval_data(0, 1))
  decoded = list(task.decode_data(0, 1))
  assert len(parsed) == reads
  for a, b, c in zip(first, again, decoded, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
      np.testing.assert_array_equal(a[key], c[key])
