"""Sparse row updates of DLRM's embedding tables (optimizers/embeddings.py)."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trainer
from conftest import load_config
from errors import ConfigError
from optimizers import embeddings, shampoo

SMALL = dict(task__generated_train=24_000, task__generated_eval=3000, task__dataset='synthetic_criteo_small',
             task__embedding_dim=8, task__bottom_mlp=(16,), task__top_mlp=(16,), eval_batch_size=1024,
             num_steps=6, eval_every=6, log_every=2, grad_clip_norm=0.0)


def _train_losses(workdir) -> list[float]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [line['loss'] for line in map(json.loads, f) if line.get('split') == 'train']


def _cfg(**fields):
  return load_config('dlrm_adagrad', **{f'embedding_updates__{k}': v for k, v in fields.items()}).embedding_updates


def test_sparse_adagrad_rows_train_as_dense_adagrad_on_a_sharded_mesh(tmp_path):
  """Adagrad leaves a row no step looked up where it is, so sparse row updates of the tables (at the
  optimizer's own rate and accumulator) give the dense run's losses, with the tables split over 2 x 4
  devices. The comparison sees the tables: with them frozen (a sparse rate of zero) the losses
  differ by 6e-4 to 1.6e-3 relative at the logged steps (measured), 60x the tolerance or more."""
  overrides = dict(SMALL, mesh__data=2, mesh__model=4)
  dense = trainer.run(load_config('dlrm_adagrad', **overrides), str(tmp_path / 'dense'), 'dense')
  optimizer = load_config('dlrm_adagrad').optimizer
  sparse = trainer.run(load_config('dlrm_adagrad', **overrides, embedding_updates__rule='adagrad',
                                   embedding_updates__learning_rate=optimizer.learning_rate,
                                   embedding_updates__initial_accumulator_value=optimizer.initial_accumulator_value,
                                   embedding_updates__eps=optimizer.eps),
                       str(tmp_path / 'sparse'), 'sparse')
  assert dense['status'] == sparse['status'] == 'completed'
  np.testing.assert_allclose(_train_losses(tmp_path / 'sparse'), _train_losses(tmp_path / 'dense'), rtol=1e-5)
  np.testing.assert_allclose(sparse['final_eval']['auc'], dense['final_eval']['auc'], atol=1e-5)


def test_sparse_sgd_rows_equal_dense_sgd_rows():
  """Plain SGD of the summed rows is dense SGD of the scattered gradient; untouched rows stay."""
  table = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  ids = jnp.array([4, 0, 4, 2])
  row_grads = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  tx = embeddings.sparse_rows(optax.identity(), {'table': True}, _cfg(rule='sgd', learning_rate=0.3),
                              optax.constant_schedule(0.3))
  updates, _ = tx.update({'table': row_grads}, tx.init({'table': table}), {'table': table},
                         lookups={'table': ids})
  dense_grad = jnp.zeros_like(table).at[ids].add(row_grads)
  np.testing.assert_allclose(embeddings.apply_updates({'table': table}, updates)['table'], table - 0.3 * dense_grad,
                             rtol=1e-6)


def test_a_row_looked_up_twice_gets_one_adagrad_update_of_its_summed_gradient():
  params = {'table': jnp.zeros((5, 2)), 'w': jnp.ones(3)}
  tables = {'table': True, 'w': False}
  tx = embeddings.sparse_rows(optax.sgd(1.0), tables, _cfg(rule='adagrad', learning_rate=0.5,
                                                           initial_accumulator_value=1.0, eps=0.0),
                              optax.constant_schedule(0.5))
  state = tx.init(params)
  ids = jnp.array([3, 1, 3])
  grads = {'table': jnp.array([[1.0, 2.0], [3.0, 0.0], [1.0, 2.0]]), 'w': jnp.full(3, 2.0)}
  updates, state = tx.update(grads, state, params, lookups={'table': ids, 'w': None})
  new = embeddings.apply_updates(params, updates)
  summed = np.array([2.0, 4.0])  # row 3's two lookups
  np.testing.assert_allclose(new['table'][3], -0.5 * summed / np.sqrt(1.0 + summed ** 2), rtol=1e-6)
  np.testing.assert_allclose(new['table'][1], -0.5 * np.array([3.0, 0.0]) / np.sqrt([10.0, 1.0]), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(new['table'])[[0, 2, 4]], 0.0)
  np.testing.assert_allclose(state.accumulators['table'][3], 1.0 + summed ** 2)
  np.testing.assert_array_equal(state.accumulators['table'][0], 1.0)
  np.testing.assert_allclose(new['w'], 1.0 - 2.0)  # the other parameters: the run's optimizer (SGD at 1)


def test_tables_leave_the_run_optimizer_and_the_plan_shows_it(tmp_path):
  """Shampoo with sparse tables (roots refreshed on the host's CPU): the tables' accumulators split over
  the mesh as the tables, the step compiles for the 2 x 4 mesh, and the plan's Shampoo stacks are the
  MLPs' alone."""
  overrides = dict(SMALL, optimizer__root_refresh='async_host', mesh__data=2, mesh__model=4)
  setup = trainer.loop.set_up(load_config('dlrm_shampoo', **overrides, embedding_updates__rule='adagrad'),
                              jax.devices(), 'dlrm_shampoo', with_data=False)
  state = setup.abstract_state.opt_state
  assert isinstance(state, embeddings.SparseRowsState)
  assert state.accumulators['table_0'].shape == setup.abstract_state.params['table_0'].shape
  # The accumulators are split over the mesh as their tables.
  assert setup.shardings.state.opt_state.accumulators['table_0'] == setup.shardings.params['table_0']
  assert not setup.shardings.params['table_0'].is_fully_replicated
  # The plan compiles the sparse step for the mesh, and Shampoo's stacks are the MLPs' alone.
  config = load_config('dlrm_shampoo', **overrides, embedding_updates__rule='adagrad', data_dir=str(tmp_path / 'x'))
  plan = trainer.plan.make_plan(config, 'dlrm_shampoo')
  mlps = [p.shape for path, p in flax.traverse_util.flatten_dict(setup.abstract_state.params, sep='/').items()
          if not path.startswith('table_')]
  hp = {k: config.optimizer[k] for k in shampoo.FIELDS}
  assert plan['fits'] and plan['shampoo']['stacks'] == {
      group: size.padded for group, size in shampoo.blocking.plan(mlps, hp, 8).groups.items()}


@pytest.mark.parametrize('overrides, message', [
    (dict(embedding_updates__rule='lazy_adam'), r"embedding_updates.rule='lazy_adam': choose one of dense, sgd, adagrad"),
    (dict(embedding_updates__rule='adagrad', embedding_updates__learning_rate=-1.0), 'learning_rate'),
    (dict(embedding_updates__rule='adagrad', grad_accum_steps=2), 'grad_accum_steps=1'),
])
def test_bad_sparse_settings_are_refused_in_one_line(tmp_path, overrides, message):
  with pytest.raises(ConfigError, match=message):
    trainer.run(load_config('dlrm_adagrad', **SMALL, **overrides), str(tmp_path / 'run'), 'dlrm_adagrad')
  assert not (tmp_path / 'run').exists()


def test_sparse_updates_need_a_task_with_tables_and_an_optimizer_without_curvature(tmp_path):
  with pytest.raises(ConfigError, match='has no embedding tables'):
    trainer.run(load_config('lp_regression_adam', embedding_updates__rule='sgd'), str(tmp_path / 'a'), 'lp')
  with pytest.raises(ConfigError, match='kfac estimates curvature'):
    trainer.run(load_config('dlrm_kfac', **SMALL, embedding_updates__rule='sgd'), str(tmp_path / 'b'), 'dlrm_kfac')
