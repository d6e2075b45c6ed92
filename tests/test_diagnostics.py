"""Curvature diagnostics: estimates against known Hessians, the trainer's logging, and off-by-default."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import trainer
from conftest import load_config
from results import compare
from trainer import diagnostics


def quadratic(hessians: dict):
  """0.5 sum_k w_k^T A_k w_k over leaves w_k (flattened): a block-diagonal Hessian."""
  return lambda params: 0.5 * sum(w.reshape(-1) @ hessians[k] @ w.reshape(-1) for k, w in params.items())


def test_diagonal_quadratic_gives_exact_diagonal_and_r_med():
  diag = {'a': jnp.array([1.0, 2.0, 3.0, 10.0]), 'b': jnp.array([0.5, 4.0, 6.0, 8.0, 1.5, 2.5])}
  params = {'a': jnp.ones(4), 'b': jnp.ones((2, 3))}
  loss = quadratic({k: jnp.diag(v) for k, v in diag.items()})
  estimate = diagnostics.hessian_diagonal(loss, params, jax.random.PRNGKey(0), samples=3)
  np.testing.assert_allclose(estimate['a'], diag['a'], rtol=1e-6)  # z * Hz = diag exactly, for any z
  np.testing.assert_allclose(estimate['b'].reshape(-1), diag['b'], rtol=1e-6)
  everything = np.concatenate([diag['a'], diag['b']])
  np.testing.assert_allclose(diagnostics.r_med(jnp.asarray(everything)), 10.0 / np.median(everything))
  np.testing.assert_allclose(diagnostics.r_med(estimate['a']), 10.0 / 2.5, rtol=1e-6)
  with_untouched = jnp.asarray([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 9.0])  # zeros: entries the batch cannot move
  np.testing.assert_allclose(diagnostics.r_med(with_untouched), 9.0 / 2.0)
  top = diagnostics.top_eigenvalue(loss, params, jax.random.PRNGKey(1), iterations=50)
  np.testing.assert_allclose(top, 10.0, rtol=1e-4)


def test_dense_quadratic_eigenvalue_and_hutchinson_diagonal():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  eigenvalues = np.array([20.0, 5.0] + list(np.linspace(0.1, 3.0, 10)))
  hessian = (q * eigenvalues) @ q.T
  loss = quadratic({'w': jnp.asarray(hessian, jnp.float32)})
  params = {'w': jnp.zeros((3, 4))}
  top = diagnostics.top_eigenvalue(loss, params, jax.random.PRNGKey(2), iterations=40)
  np.testing.assert_allclose(top, 20.0, rtol=1e-3)
  estimate = diagnostics.hessian_diagonal(loss, params, jax.random.PRNGKey(3), samples=4000)
  np.testing.assert_allclose(estimate['w'].reshape(-1), np.diag(hessian), atol=0.25)
  assert np.abs(estimate['w'].reshape(-1) - np.diag(hessian)).max() < np.abs(hessian - np.diag(np.diag(hessian))).max()


def test_trainer_logs_diagnostics_every_n_steps_and_results_draws_them(tmp_path):
  for optimizer in ('sgd', 'shampoo'):
    name = f'lp_regression_{optimizer}'
    config = load_config(name, num_steps=20, eval_every=10, log_every=5, task__depth=2,
                         diagnostics__every=10, optimizer__learning_rate=0.005)
    summary = trainer.run(config, str(tmp_path / optimizer), name, devices=jax.devices()[:1])
    with open(tmp_path / optimizer / 'metrics.jsonl') as f:
      lines = [json.loads(line) for line in f if '"diagnostics"' in line]
    assert [m['step'] for m in lines] == [0, 10, 20]
    for m in lines:
      assert m['top_eigenvalue'] > 0 and m['r_med'] >= 1 and m['hessian_trace'] > 0
      assert m['hessian_zero_fraction'] == 0  # every weight of a linear network moves the loss
      assert {'r_med/layer0/kernel', 'r_med/layer1/kernel'} <= set(m)
    assert lines[0]['top_eigenvalue'] != lines[-1]['top_eigenvalue']  # measured along the trajectory
    if optimizer == 'shampoo':
      assert all(m['shampoo_log10_cond_max'] >= m['shampoo_log10_cond_median'] >= 0 for m in lines)
      stacks = [k.split('/')[1] for k in lines[-1] if k.startswith('shampoo_log10_cond/')]
      assert stacks and all(f'shampoo_root_error/{stack}' in lines[-1] for stack in stacks)
      assert max(lines[-1][f'shampoo_log10_cond/{s}'] for s in stacks) == lines[-1]['shampoo_log10_cond_max']
    assert summary['diagnostics_seconds'] > 0

  out = tmp_path / 'compare'
  assert compare.main([str(tmp_path / 'sgd'), str(tmp_path / 'shampoo'), f'--out={out}']) == 0
  assert os.path.getsize(out / 'lp_regression_diagnostics.png') > 10_000


def test_off_by_default_builds_and_compiles_nothing(tmp_path, monkeypatch):
  def refuse(*args):
    raise AssertionError('diagnostics built while off')
  monkeypatch.setattr(diagnostics, 'build', refuse)
  config = load_config('lp_regression_adam', num_steps=10, eval_every=10)
  assert config.diagnostics.every == 0
  summary = trainer.run(config, str(tmp_path), 'lp_regression_adam', devices=jax.devices()[:1])
  with open(tmp_path / 'metrics.jsonl') as f:
    assert '"diagnostics"' not in f.read()
  assert summary['diagnostics_seconds'] == 0


def test_shampoo_conditioning_leaves_out_the_identities_padding_the_stacks():
  """Statistics diag(1, 10) and diag(1, 1000) padded with 6 identities (condition 1): the median
  and max are those of the two real matrices, not of the padding."""
  from configs import optimizer_defaults
  from optimizers import shampoo
  hp = {**optimizer_defaults.BY_NAME['shampoo'], 'block_size': 2, 'merge_small_dims_block_size': 1}
  params = {'w': jnp.zeros((2, 1, 2))}  # merged to one 2 x 2 block: statistics of modes 0 and 1
  state = shampoo.scale_by_shampoo(stack_multiple=8, **hp).init(params)
  real = {'2x2_p4_m0': jnp.diag(jnp.array([1.0, 10.0])), '2x2_p4_m1': jnp.diag(jnp.array([1.0, 1000.0]))}
  state = state._replace(stats={k: s.at[0].set(real[k]) for k, s in state.stats.items()})
  metrics = jax.tree.map(float, diagnostics.shampoo_conditioning(state, matrix_epsilon=0.0))
  assert metrics['shampoo_log10_cond_max'] == np.float32(3.0)
  assert metrics['shampoo_log10_cond_median'] == np.float32(2.0)  # of 1 and 3; with the padding it would be 0
  assert metrics['shampoo_log10_cond/2x2_p4_m0'] == np.float32(1.0)
