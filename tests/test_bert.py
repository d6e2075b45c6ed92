"""BERT: the model's masking contract, the MLM head, tiny training, sharding, config checks."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trainer
from errors import ConfigError
from conftest import assert_remat_changes_nothing, assert_sharded_run_matches_one_device, load_config, remat_policies
from tasks import layers, losses
from tasks.bert import Bert, ModelConfig, Pretraining, model_config
from trainer import partitioning

MODEL = ModelConfig(vocab_size=50, features=32, num_heads=4, hidden=64, layers=2, dropout=0.0,
                    attention_dropout=0.0, max_positions=16, next_sentence=True)
# A small prepared corpus, through the real generator, preparation script and reader.
SMALL = dict(task__generated_documents=400, task__vocab_size=300, task__dataset='synthetic_bert_small',
             task__max_seq_length=32, task__max_predictions_per_seq=5, global_batch_size=16,
             eval_batch_size=64, schedule__warmup_steps=10)


def random_batch(seed: int, batch: int = 3, length: int = 16, predictions: int = 4):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(6, length, batch)
  mask = (np.arange(length) < lengths[:, None]).astype(np.int32)
  positions = np.sort(np.stack([rng.choice(np.arange(1, n - 1), predictions, replace=False) for n in lengths]), 1)
  return {'input_ids': rng.integers(5, MODEL.vocab_size, (batch, length)).astype(np.int32) * mask,
          'input_mask': mask, 'segment_ids': (np.arange(length) >= lengths[:, None] // 2).astype(np.int32) * mask,
          'masked_lm_positions': positions.astype(np.int32),
          'masked_lm_ids': rng.integers(5, MODEL.vocab_size, (batch, predictions)).astype(np.int32),
          'masked_lm_weights': np.ones((batch, predictions), np.float32),
          'next_sentence_labels': rng.integers(0, 2, (batch, 1)).astype(np.int32)}


@pytest.fixture(scope='module')
def model_and_params():
  model = Bert(MODEL)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), random_batch(0), deterministic=True)['params'])
  return model, params


def test_padding_never_reaches_the_outputs(model_and_params):
  model, params = model_and_params
  batch = random_batch(1)
  mlm, nsp = model.apply({'params': params}, batch, deterministic=True)
  assert mlm.shape == (3, 4, MODEL.padded_vocab_size) and nsp.shape == (3, 2)
  noisy = dict(batch)  # other tokens and segments where input_mask is 0
  noisy['input_ids'] = np.where(batch['input_mask'] > 0, batch['input_ids'], 7)
  noisy['segment_ids'] = np.where(batch['input_mask'] > 0, batch['segment_ids'], 1)
  mlm_noisy, nsp_noisy = model.apply({'params': params}, noisy, deterministic=True)
  np.testing.assert_allclose(mlm_noisy, mlm, atol=1e-5)
  np.testing.assert_allclose(nsp_noisy, nsp, atol=1e-5)
  changed = dict(batch, input_ids=batch['input_ids'].copy())  # control: a real token does matter
  changed['input_ids'][:, 1] = 9
  assert not np.allclose(model.apply({'params': params}, changed, deterministic=True)[0], mlm, atol=1e-3)


def test_padded_predictions_never_contribute_to_the_loss(tmp_path):
  task = Pretraining(load_config('bert_adam', **SMALL))
  params, state = task.init(jax.random.PRNGKey(0))
  params = nn.unbox(params)
  batch = {k: jnp.asarray(v) for k, v in random_batch(2, length=32, predictions=5).items()}
  batch['masked_lm_weights'] = batch['masked_lm_weights'].at[:, -2:].set(0.0)
  loss, (_, metrics) = task.loss(params, state, batch, jax.random.PRNGKey(1))
  other = dict(batch, masked_lm_ids=batch['masked_lm_ids'].at[:, -2:].set(11),
               masked_lm_positions=batch['masked_lm_positions'].at[:, -2:].set(0))
  other_loss, (_, other_metrics) = task.loss(params, state, other, jax.random.PRNGKey(1))
  np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
  np.testing.assert_allclose(other_metrics['mlm_accuracy'], metrics['mlm_accuracy'])
  counted = dict(batch, masked_lm_ids=batch['masked_lm_ids'].at[:, 0].set(11))  # control
  assert not np.isclose(task.loss(params, state, counted, jax.random.PRNGKey(1))[0], loss, rtol=1e-6)


def test_the_mlm_head_is_tied_to_the_token_embedding(model_and_params):
  model, params = model_and_params
  assert {'mlm_transform', 'mlm_bias', 'embed'} <= set(params)
  assert not any(p.shape[-1] == MODEL.vocab_size and p.ndim == 2 for p in jax.tree.leaves(params)
                 if p.shape != params['embed']['embedding'].shape)
  batch = random_batch(3)
  shifted = jax.tree.map(lambda x: x, params)
  shifted['embed']['embedding'] = params['embed']['embedding'].at[11].add(0.5)
  before = model.apply({'params': params}, batch, deterministic=True)[0]
  after = model.apply({'params': shifted}, batch, deterministic=True)[0]
  assert np.abs(after[..., 11] - before[..., 11]).max() > 10 * np.abs(np.delete(after - before, 11, -1)).max()


@pytest.mark.parametrize('model,padded', [(1, 30592), (8, 30720), (16, 30720), (-1, 30592)])
def test_the_vocabulary_is_padded_to_128_rows_per_model_shard(model, padded):
  """30522 = BERT's WordPiece vocabulary; a model axis of -1 (size unknown from the config) pads to 128."""
  config = load_config('bert_adam', 'paper', mesh__data=1, mesh__model=model)
  assert model_config(config).padded_vocab_size == padded and config.task.vocab_size == 30522


def test_sharded_forward_masks_the_vocabulary_padding():
  """On data=2 x model=4 the padded vocabulary (300 -> 512) splits over `model`, and the loss and
  metrics equal those of the logits cut to the real vocabulary."""
  task = Pretraining(load_config('bert_adam', **SMALL, mesh__data=2, mesh__model=4))
  mesh = partitioning.make_mesh(task.config.mesh, jax.devices())
  shardings, _ = partitioning.logical_shardings(jax.eval_shape(task.init, jax.random.PRNGKey(0)), mesh,
                                                task.logical_axis_rules)
  params = jax.jit(lambda rng: nn.unbox(task.init(rng)[0]), out_shardings=shardings)(jax.random.PRNGKey(0))
  assert params['embed']['embedding'].shape == (512, 64) and params['mlm_bias'].shape == (512,)
  assert params['embed']['embedding'].sharding.spec == jax.sharding.PartitionSpec('model', None)
  batch = jax.device_put(random_batch(4, batch=4, length=32, predictions=5),
                         partitioning.batch_sharding(mesh))
  loss, (_, metrics) = jax.jit(task.loss)(params, {}, batch, jax.random.PRNGKey(1))

  mlm, nsp = task.model.apply({'params': jax.device_get(params)}, jax.device_get(batch), deterministic=True)
  assert np.all(mlm[..., 300:] == layers.NEG_INF)
  real = mlm[..., :300]
  labels, weights = batch['masked_lm_ids'], batch['masked_lm_weights']
  mlm_loss = np.sum(-jnp.take_along_axis(jax.nn.log_softmax(real), labels[..., None], -1)[..., 0] * weights)
  nsp_loss = -np.mean(jnp.take_along_axis(jax.nn.log_softmax(nsp), batch['next_sentence_labels'], -1))
  np.testing.assert_allclose(metrics['mlm_loss'], mlm_loss / np.sum(weights), rtol=1e-5)
  np.testing.assert_allclose(loss, mlm_loss / np.sum(weights) + nsp_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['mlm_accuracy'],
                             np.sum((np.argmax(real, -1) == labels) * weights) / np.sum(weights))
  grads = jax.jit(jax.grad(lambda p: task.loss(p, {}, batch, jax.random.PRNGKey(1))[0]))(params)
  padding = (params['embed']['embedding'], grads['embed']['embedding'], grads['mlm_bias'])
  assert not any(np.any(rows[300:]) for rows in padding)  # starts at zero, gets no gradient: stays zero


def test_tiny_training_lowers_mlm_loss(tmp_path):
  config = load_config('bert_adam', **SMALL, num_steps=80, eval_every=40)
  summary = trainer.run(config, str(tmp_path / 'run'), 'bert_adam', devices=jax.devices()[:1])
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    evals = [json.loads(line) for line in f if '"eval"' in line]
  assert summary['status'] == 'completed'
  assert set(summary['final_eval']) == {'loss', 'mlm_loss', 'mlm_accuracy', 'nsp_loss', 'nsp_accuracy'}
  assert evals[-1]['mlm_loss'] < evals[0]['mlm_loss'] < np.log(300)
  assert summary['final_eval']['mlm_accuracy'] > 0.1


def test_sharded_run_matches_single_device(tmp_path):
  """data=4 x model=2 (heads, feed-forward and vocabulary split over `model`) equals one device."""
  assert_sharded_run_matches_one_device('bert_adam', tmp_path, data=4, model=2,
                                        **dict(SMALL, num_steps=4, eval_every=4, schedule__warmup_steps=2))


def test_bad_settings_are_refused_before_training(tmp_path):
  with pytest.raises(ConfigError, match='max_predictions_per_seq'):
    Pretraining(load_config('bert_adam', task__max_predictions_per_seq=64))
  with pytest.raises(ConfigError, match='nsp_accuracy'):
    trainer.run(load_config('bert_adam', **SMALL, task__next_sentence=False,
                            target=('nsp_accuracy', 0.9, 'above')), str(tmp_path / 'run'), 'bert_adam')
  with pytest.raises(ConfigError, match=r"parameter blocks_0/attention/\w+/\w+ .*'model' \(size 8\)"):
    trainer.run(load_config('bert_adam', **SMALL, task__features=36, mesh__data=1, mesh__model=8),
                str(tmp_path / 'run'), 'bert_adam')
  assert not (tmp_path / 'run').exists()


def loss_gradients_and_remat_policies(remat):
  """(parameters, (loss, gradients), policies of the gradient's checkpoint regions) of MODEL with dropout."""
  batch = random_batch(5)
  model = Bert(dataclasses.replace(MODEL, remat=remat, dropout=0.1, attention_dropout=0.1))
  params = nn.unbox(model.init(jax.random.PRNGKey(0), batch, deterministic=True)['params'])

  def loss(params):
    mlm, nsp = model.apply({'params': params}, batch, deterministic=False, rngs={'dropout': jax.random.PRNGKey(1)})
    return (losses.softmax_cross_entropy(mlm, batch['masked_lm_ids'], batch['masked_lm_weights'])
            + losses.softmax_cross_entropy(nsp, batch['next_sentence_labels']))
  return params, jax.value_and_grad(loss)(params), remat_policies(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_keeps_the_loss_gradients_and_parameter_paths(remat):
  """Rematerialized blocks recompute their forward pass, dropout included, in the backward pass: loss,
  gradients and parameter paths (which checkpoints and Shampoo's statistics are keyed by) stay as they
  are, and the gradient holds one checkpoint region per block, with the setting's policy."""
  assert_remat_changes_nothing(loss_gradients_and_remat_policies, remat, MODEL.layers)


def test_remat_is_checked_and_on_for_the_paper_model():
  with pytest.raises(ConfigError, match=r"task.remat='some': choose one of none, full, dots"):
    dataclasses.replace(MODEL, remat='some')
  assert model_config(load_config('bert_adam', 'paper')).remat == 'full'
  assert model_config(load_config('bert_adam')).remat == 'none'


def test_post_ln_blocks_end_in_their_norm_and_the_model_drops_the_final_norm():
  """BERT's own blocks (Devlin et al. 2019; Vaswani et al.'s post-LN): LayerNorm(x + sublayer(x)), so
  each block's output is normalised per token, and no final norm follows the last block."""
  post = dataclasses.replace(MODEL, layer_norm='post')
  batch = random_batch(3)
  params = nn.unbox(Bert(post).init(jax.random.PRNGKey(0), batch, deterministic=True)['params'])
  pre = nn.unbox(Bert(MODEL).init(jax.random.PRNGKey(0), batch, deterministic=True)['params'])
  assert set(pre) - set(params) == {'final_norm'} and set(params) <= set(pre)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, MODEL.features)) * 3 + 1
  mask = jnp.ones((2, 1, 6, 6), bool)
  for position, normalised in (('post', True), ('pre', False)):
    block = layers.EncoderBlock(4, MODEL.features, 64, 0.0, 0.0, layer_norm_position=position)
    y = block.apply(block.init(jax.random.PRNGKey(2), x, mask, deterministic=True), x, mask, deterministic=True)
    assert np.allclose(y.mean(-1), 0, atol=1e-4) == normalised
    assert np.allclose(y.std(-1), 1, atol=1e-2) == normalised


def test_the_paper_model_is_post_ln_and_the_position_is_checked():
  assert model_config(load_config('bert_adam', 'paper')).layer_norm == 'post'
  assert model_config(load_config('bert_adam')).layer_norm == 'pre'
  with pytest.raises(ConfigError, match=r"task.layer_norm='middle': choose one of pre, post"):
    model_config(load_config('bert_adam', task__layer_norm='middle'))


def test_the_paper_run_is_lambs_bert_large_setting():
  """You et al. 2020 at batch 32K: 15625 steps, warm-up over the first 1/5, peak rate 5e-3, as LAMB sets it."""
  config = load_config('bert_lamb', 'paper')
  assert (config.global_batch_size, config.num_steps, config.schedule.warmup_steps) == (32768, 15625, 3125)
  assert (config.schedule.decay, config.optimizer.learning_rate, config.optimizer.eps) == ('linear', 5e-3, 1e-6)
  assert config.optimizer.weight_decay == 0.01
