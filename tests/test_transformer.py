"""The Transformer translation task: masking, decoding, beam search, BLEU, training, sharding."""

import dataclasses
import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trainer
from conftest import assert_remat_changes_nothing, assert_sharded_run_matches_one_device, load_config, remat_policies
from errors import ConfigError
from tasks import beam_search, layers, losses
from tasks.transformer import ModelConfig, Transformer, Translation, cached_decoder, model_config
from trainer import partitioning

KEYS = ('inputs', 'targets', 'inputs_segmentation', 'targets_segmentation', 'inputs_position',
        'targets_position')
MODEL = ModelConfig(vocab_size=40, features=32, num_heads=4, hidden=64, encoder_layers=2,
                    decoder_layers=2, dropout=0.0, attention_dropout=0.0)
# A data set small enough for tests, through the real reader and tokenizer.
SMALL = dict(task__generated_train_pairs=2000, task__generated_eval_pairs=64, task__vocab_size=300,
             task__tfds_dir='synthetic_wmt_small', global_batch_size=16, eval_batch_size=32,
             schedule__warmup_steps=10)
# One layer each side, for tests that compile several optimizers or meshes.
SMALLEST = dict(SMALL, task__encoder_layers=1, task__decoder_layers=1, task__features=32, task__hidden=64)


def pack(pairs, length):
  """One row holding the (source, target) id lists, in order."""
  row = {k: np.zeros(length, np.int32) for k in KEYS}
  used = {'inputs': 0, 'targets': 0}
  for segment, sides in enumerate(pairs, 1):
    for side, ids in zip(('inputs', 'targets'), sides):
      start, end = used[side], used[side] + len(ids)
      row[side][start:end] = ids
      row[f'{side}_segmentation'][start:end] = segment
      row[f'{side}_position'][start:end] = np.arange(len(ids))
      used[side] = end
  return {k: v[None] for k, v in row.items()}


@pytest.fixture(scope='module')
def model_and_params():
  model = Transformer(MODEL)
  params = model.init(jax.random.PRNGKey(0), pack([([5, 1], [6, 1])], 8), deterministic=True)['params']
  return model, nn.unbox(params)


def random_pairs(seed, count):
  rng = np.random.default_rng(seed)
  return [(list(rng.integers(3, 40, rng.integers(2, 8))) + [1],
           list(rng.integers(3, 40, rng.integers(2, 8))) + [1]) for _ in range(count)]


def test_logits_shape_and_logical_axes(model_and_params):
  model, _ = model_and_params
  boxed = model.init(jax.random.PRNGKey(0), pack(random_pairs(0, 1), 12), deterministic=True)['params']
  names = {tuple(box.names) for box in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))}
  assert {('vocab', 'embed'), ('embed', 'heads'), ('heads', 'embed'), ('embed', 'mlp'), ('mlp', 'embed')} <= names
  logits = model.apply({'params': nn.unbox(boxed)}, pack(random_pairs(0, 2), 20), deterministic=True)
  assert logits.shape == (1, 20, MODEL.padded_vocab_size)


def test_packing_never_leaks_across_segments(model_and_params):
  model, params = model_and_params
  pairs = random_pairs(1, 3)
  packed = model.apply({'params': params}, pack(pairs, 32), deterministic=True)[0]
  offset = 0
  for pair in pairs:
    alone = model.apply({'params': params}, pack([pair], 32), deterministic=True)[0]
    n = len(pair[1])
    np.testing.assert_allclose(packed[offset:offset + n], alone[:n], atol=1e-5)
    offset += n
  # Control: one segment spanning the row lets the pairs see each other, and the logits change.
  merged = pack(pairs, 32)
  merged['inputs_segmentation'] = np.minimum(merged['inputs_segmentation'], 1)
  merged['targets_segmentation'] = np.minimum(merged['targets_segmentation'], 1)
  leaked = model.apply({'params': params}, merged, deterministic=True)[0]
  assert np.abs(leaked[len(pairs[0][1]):offset] - packed[len(pairs[0][1]):offset]).max() > 1e-3


def decoder(model, params, source, steps):
  """(step function over the cache, initial cache) for one source row."""
  encoded = model.apply({'params': params}, source['inputs'], source['inputs_segmentation'],
                        source['inputs_position'], deterministic=True, method=Transformer.encode)
  return cached_decoder(MODEL, params, encoded, source['inputs_segmentation'], steps)


def test_cached_decoding_matches_teacher_forcing(model_and_params):
  model, params = model_and_params
  source, target = random_pairs(2, 1)[0]
  row = pack([(source, target)], 12)
  forced = jax.nn.log_softmax(model.apply({'params': params}, row, deterministic=True)[0])
  step, cache = decoder(model, params, row, 12)
  previous, vocab = [0] + target[:-1], MODEL.vocab_size
  for position, token in enumerate(previous):
    log_probs, cache = step(jnp.array([[token]]), position, cache)
    np.testing.assert_allclose(log_probs[0, :vocab], forced[position, :vocab], atol=1e-4)
    assert np.all(log_probs[0, vocab:] < layers.NEG_INF / 2)  # the padding is never decoded


def markov_step(table):
  """A toy model: log-probabilities of the next token depend only on the current one."""
  def step(tokens, position, cache):
    return table[tokens[:, 0]], cache
  return step


def markov_table(seed, vocab):
  logits = np.random.default_rng(seed).normal(size=(vocab, vocab)) * 2
  return jax.nn.log_softmax(jnp.asarray(logits))


@pytest.mark.parametrize('seed', range(5))
def test_beam_of_one_is_greedy(seed):
  table = markov_table(seed, 6)
  tokens, _ = beam_search.beam_search(markov_step(table), {}, 1, 1, 8, eos=1, alpha=0.0)
  greedy, token = [], 0
  while len(greedy) < 8:
    token = int(jnp.argmax(table[token]))
    greedy.append(token)
    if token == 1:
      break
  np.testing.assert_array_equal(tokens[0, :len(greedy)], greedy)
  assert not tokens[0, len(greedy):].any()


@pytest.mark.parametrize('seed', range(3))
def test_wide_beam_finds_the_best_sequence(seed):
  """With beam >= every prefix, the search is exhaustive: compare with brute force."""
  vocab, length, alpha = 3, 4, 0.6
  table = np.asarray(markov_table(seed, vocab))
  best = -np.inf
  for n in range(1, length + 1):
    for body in itertools.product([0, 2], repeat=n - 1):
      sequence = list(body) + [1]
      log_prob = sum(table[a, b] for a, b in zip([0] + sequence[:-1], sequence))
      best = max(best, log_prob / beam_search.length_penalty(n, alpha))
  _, score = beam_search.beam_search(markov_step(jnp.asarray(table)), {}, 1, 16, length, eos=1,
                                     alpha=alpha)
  np.testing.assert_allclose(score[0], best, rtol=1e-5)
  narrow, _ = beam_search.beam_search(markov_step(jnp.asarray(table)), {}, 1, 1, length, eos=1,
                                      alpha=alpha)
  assert narrow.shape == (1, length)


@pytest.mark.parametrize('model,padded', [(1, 32000), (8, 32768), (-1, 32000)])
def test_the_vocabulary_is_padded_to_128_rows_per_model_shard(model, padded):
  config = load_config('transformer_adam', 'paper', mesh__data=1, mesh__model=model)
  assert model_config(config).padded_vocab_size == padded and config.task.vocab_size == 32000


def test_sharded_forward_masks_the_vocabulary_padding():
  """On data=2 x model=4 the padded vocabulary (300 -> 512) splits over `model`, and the smoothed
  training loss and the eval sums equal those of the logits cut to the real vocabulary."""
  task = Translation(load_config('transformer_adam', **SMALLEST, mesh__data=2, mesh__model=4))
  mesh = partitioning.make_mesh(task.config.mesh, jax.devices())
  shardings, _ = partitioning.logical_shardings(jax.eval_shape(task.init, jax.random.PRNGKey(0)), mesh,
                                                task.logical_axis_rules)
  params = jax.jit(lambda rng: nn.unbox(task.init(rng)[0]), out_shardings=shardings)(jax.random.PRNGKey(0))
  assert params['embed']['embedding'].shape == (512, 32)
  assert params['embed']['embedding'].sharding.spec == jax.sharding.PartitionSpec('model', None)
  rows = [pack(random_pairs(seed, 3), 32) for seed in range(4)]
  batch = {k: np.concatenate([row[k] for row in rows]) for k in KEYS}
  batch['weight'] = np.ones(4, np.float32)
  sharded = jax.device_put(batch, partitioning.batch_sharding(mesh))
  loss, (_, metrics) = jax.jit(task.loss)(params, {}, sharded, jax.random.PRNGKey(1))
  sums = jax.jit(task.evaluate)(params, {}, sharded)

  logits = task.model.apply({'params': jax.device_get(params)}, batch, deterministic=True)
  assert np.all(logits[..., 300:] == layers.NEG_INF)
  real, targets = logits[..., :300], batch['targets']
  weights = (batch['targets_segmentation'] > 0).astype(np.float32)
  np.testing.assert_allclose(loss, losses.softmax_cross_entropy(real, targets, weights, 0.1), rtol=1e-5)
  total = np.sum(weights)
  cross_entropy = losses.softmax_cross_entropy(real, targets, weights)
  np.testing.assert_allclose(sums['loss'], cross_entropy * total, rtol=1e-5)
  correct = np.sum((np.argmax(real, -1) == targets) * weights)
  np.testing.assert_allclose(metrics['accuracy'], correct / total)
  np.testing.assert_allclose(sums['accuracy'], correct)


def test_bleu_of_the_references_against_themselves_is_100():
  from data import wmt
  task = Translation(load_config('transformer_adam', **SMALL, task__bleu_sentences=20))
  arrays, references = task._decode_set()
  ids = wmt.encode(task.tokenizer(), references)
  predictions = np.zeros((len(ids), max(map(len, ids))), np.int32)
  for row, sentence in zip(predictions, ids):
    row[:len(sentence)] = sentence
  shuffled = np.random.default_rng(0).permutation(len(ids))
  assert task.decode_metrics(arrays['index'][shuffled], predictions[shuffled])['bleu'] == pytest.approx(100)
  predictions[:, 1:] = 0  # one word per sentence: far from the references
  assert task.decode_metrics(arrays['index'], predictions)['bleu'] < 5


def test_tiny_training_lowers_loss_and_reports_bleu(tmp_path):
  summary = trainer.run(load_config('transformer_adam', **SMALL, num_steps=40, eval_every=20,
                                    task__bleu_every=2, task__bleu_sentences=16,
                                    task__max_decode_length=24),
                        str(tmp_path / 'run'), 'transformer_adam', devices=jax.devices()[:1])
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    evals = [r for r in map(json.loads, f) if r['split'] == 'eval']
  assert [r['step'] for r in evals] == [20, 40]
  assert 'bleu' not in evals[0] and 0 <= evals[1]['bleu'] <= 100  # every 2nd eval, and the last
  assert evals[1]['loss'] < evals[0]['loss'] < np.log(300)
  assert summary['status'] == 'completed'


def test_sharded_run_matches_single_device(tmp_path):
  """data=4 x model=2 (heads, feed-forward and vocabulary split over `model`) equals one device, with
  Shampoo's block stacks sharded too (K-FAC's sharded factors: tests/test_kfac.py)."""
  assert_sharded_run_matches_one_device('transformer_shampoo', tmp_path, data=4, model=2,
                                        **dict(SMALLEST, num_steps=4, eval_every=4, task__bleu_sentences=0,
                                               schedule__warmup_steps=2, optimizer__start_preconditioning_step=2))


def loss_gradients_and_remat_policies(remat):
  """(parameters, (loss, gradients), policies of the gradient's checkpoint regions) of MODEL with dropout."""
  batch = pack(random_pairs(0, 3), 24)
  model = Transformer(dataclasses.replace(MODEL, remat=remat, dropout=0.1, attention_dropout=0.1))
  params = nn.unbox(model.init(jax.random.PRNGKey(0), batch, deterministic=True)['params'])

  def loss(params):
    logits = model.apply({'params': params}, batch, deterministic=False, rngs={'dropout': jax.random.PRNGKey(1)})
    return losses.softmax_cross_entropy(logits, batch['targets'], batch['targets_segmentation'] > 0)
  return params, jax.value_and_grad(loss)(params), remat_policies(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_keeps_the_loss_gradients_and_parameter_paths(remat):
  """Rematerialized blocks recompute their forward pass, dropout included, in the backward pass: loss,
  gradients and parameter paths (which checkpoints and Shampoo's statistics are keyed by) stay as they
  are, and the gradient holds one checkpoint region per block, with the setting's policy."""
  assert_remat_changes_nothing(loss_gradients_and_remat_policies, remat, MODEL.encoder_layers + MODEL.decoder_layers)


def test_remat_is_checked_and_on_for_the_paper_model():
  with pytest.raises(ConfigError, match=r"task.remat='some': choose one of none, full, dots"):
    dataclasses.replace(MODEL, remat='some')
  assert model_config(load_config('transformer_adam', 'paper')).remat == 'full'
  assert model_config(load_config('transformer_adam')).remat == 'none'


def parameter_count(config) -> int:
  """Parameters of the task's model, from abstract shapes (nothing allocated, no data read)."""
  params, _ = jax.eval_shape(Translation(config).init, jax.random.PRNGKey(0))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(params)))


@pytest.mark.parametrize('model,paper_count', [('big_ff8192', 375.4e6), ('base', 93.3e6)])
def test_the_paper_models_have_the_papers_parameter_counts(model, paper_count):
  """Anil et al. 2020, Sec. 6: Transformer-Big 375.4M (the `paper` default), Transformer 93.3M."""
  config = load_config('transformer_adam', 'paper', task__model=model)
  assert not config.task.tie_embeddings
  assert parameter_count(config) == pytest.approx(paper_count, rel=0.01)


def test_untied_embeddings_give_source_target_and_output_their_own_matrix(model_and_params):
  untied = Transformer(dataclasses.replace(MODEL, tie_embeddings=False))
  batch = pack([([5, 1], [6, 1])], 8)
  params = nn.unbox(untied.init(jax.random.PRNGKey(0), batch, deterministic=True)['params'])
  _, tied_params = model_and_params
  assert {'source_embed', 'target_embed', 'output_embed'} <= set(params) and 'embed' not in params
  assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(tied_params)) + 2
  logits = untied.apply({'params': params}, batch, deterministic=True)

  def logits_with(name, row):
    shifted = dict(params, **{name: {'embedding': params[name]['embedding'].at[row].add(1.0)}})
    return untied.apply({'params': shifted}, batch, deterministic=True)
  assert not np.allclose(logits_with('source_embed', 5), logits)  # the encoder reads source id 5
  assert not np.allclose(logits_with('target_embed', 0), logits)  # the decoder starts from id 0
  moved = np.asarray(logits_with('output_embed', 7) - logits)  # the read-out: token 7's logit alone
  assert np.any(moved[..., 7] != 0) and not np.any(np.delete(moved, 7, axis=-1))
