"""Shampoo's asynchronous root refresh: the roots a step uses, and exact resume with roots in flight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.optimizer_defaults import BY_NAME
from errors import ConfigError
from optimizers import shampoo

SHAPES = [(12, 9), (20, 12), (9,)]
STEPS = 14


def hyperparameters(**overrides):
  hp = {k: BY_NAME['shampoo'][k] for k in shampoo.FIELDS}
  hp.update(block_size=8, start_preconditioning_step=3, preconditioning_compute_steps=3, beta2=0.9,
            matrix_epsilon=1e-3, **overrides)
  return hp


def gradients():
  """A fixed sequence, independent of the parameters: the statistics follow the same path whatever
  roots the updates use."""
  keys = jax.random.split(jax.random.PRNGKey(0), STEPS * len(SHAPES))
  return [[jax.random.normal(keys[i * len(SHAPES) + j], shape) for j, shape in enumerate(SHAPES)]
          for i in range(STEPS)]


def roots_used(hp, drive):
  """The roots each update used (its state's roots after it), the ages health() reports, and the
  eigenbases the state kept (warm_eigh; else None)."""
  params = [jnp.zeros(shape) for shape in SHAPES]
  tx = shampoo.scale_by_shampoo(**hp)
  update = jax.jit(tx.update)
  state, used, ages, bases = tx.init(params), [], [], []
  driver = shampoo.AsyncRoots(params, None, 1, hp) if drive else None
  for count, grads in enumerate(gradients()):
    if driver:
      state = driver.before_update(state, count)
    _, state = update(grads, state, params)
    if driver:
      driver.after_update(state, count)
    used.append(jax.device_get(state.roots))
    ages.append(int(shampoo.health(state)['shampoo_roots_age']))
    bases.append(jax.device_get(state.bases))
  return used, ages, bases


@pytest.mark.parametrize('refresh, staleness, method', [
    ('async', 1, 'newton'), ('async', 3, 'newton'), ('async_host', 3, 'newton'), ('async', 2, 'warm_eigh')])
def test_async_roots_are_the_inline_roots_delayed_by_the_staleness(refresh, staleness, method):
  """With warm_eigh the eigenbases kept between refreshes travel with the roots."""
  inline, inline_ages, inline_bases = roots_used(hyperparameters(root_method=method), drive=False)
  delayed, ages, bases = roots_used(hyperparameters(root_refresh=refresh, root_staleness=staleness, root_method=method),
                             drive=True)
  refreshes = [c for c in range(STEPS) if c >= 3 and c % 3 == 0]  # inline: at `start`, then every 3
  assert inline_ages == [c - max([r for r in refreshes if r <= c], default=c) for c in range(STEPS)]
  for count in range(STEPS):
    source = max([r for r in refreshes if r + staleness <= count], default=None)
    if source is None:  # no roots yet: the identity matrices init_fn starts from
      for key, root in delayed[count].items():
        np.testing.assert_array_equal(root, np.broadcast_to(np.eye(root.shape[-1]), root.shape))
      assert ages[count] == 0
      continue
    assert ages[count] == count - source
    for key, root in delayed[count].items():
      np.testing.assert_allclose(root, inline[source][key], rtol=1e-5, atol=1e-6, err_msg=f'{key} at {count}')
    if method == 'warm_eigh':
      for key, basis in bases[count].items():
        np.testing.assert_allclose(basis, inline_bases[source][key], rtol=1e-5, atol=1e-6)


def test_a_staleness_above_the_refresh_interval_is_refused():
  with pytest.raises(ConfigError, match='root_staleness'):
    shampoo.scale_by_shampoo(**hyperparameters(root_refresh='async', root_staleness=4))
  with pytest.raises(ConfigError, match='root_refresh'):
    shampoo.scale_by_shampoo(**hyperparameters(root_refresh='later'))


def test_host_refresh_is_refused_beside_other_processes(monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  with pytest.raises(ConfigError, match="root_refresh='async_host' runs in one process"):
    shampoo.AsyncRoots([jnp.zeros(shape) for shape in SHAPES], None, 1, hyperparameters(root_refresh='async_host'))


def test_resume_with_roots_in_flight_is_exact_on_8_devices(tmp_path, monkeypatch):
  """Refreshes after updates 4, 8, 12, ... are installed 3 updates later: the run stopped at step 10
  saves the roots launched after update 8, due at update 11, and resumes with them."""
  import os
  import signal

  import trainer
  from conftest import load_config
  from test_trainer import checkpoint_leaves, lines
  from trainer import loop

  common = dict(num_steps=16, log_every=2, eval_every=8, checkpoint_every=8, task__depth=2,
                optimizer__block_size=4, optimizer__start_preconditioning_step=4,
                optimizer__preconditioning_compute_steps=4, optimizer__root_refresh='async',
                optimizer__root_staleness=3, optimizer__matrix_epsilon=1e-3, mesh__data=4, mesh__model=2)

  def run(workdir):
    config = load_config('lp_regression_shampoo', **common)
    return trainer.run(config, str(tmp_path / workdir), 'lp_regression_shampoo', devices=jax.devices())

  straight = run('straight')
  progress = loop._Progress.__call__

  def terminated_after_step_9(self, step, t):
    if step == 9:
      os.kill(os.getpid(), signal.SIGTERM)  # seen at step 10
    return progress(self, step, t)

  monkeypatch.setattr(loop._Progress, '__call__', terminated_after_step_9)
  first = run('resumed')
  assert first['status'] == 'interrupted' and first['step'] == 10
  monkeypatch.setattr(loop._Progress, '__call__', progress)
  assert run('resumed')['status'] == 'completed'
  for a, b in zip(checkpoint_leaves(tmp_path / 'straight')[1], checkpoint_leaves(tmp_path / 'resumed')[1],
                  strict=True):
    np.testing.assert_array_equal(a, b)
  ages = [r['shampoo_roots_age'] for r in lines(tmp_path / 'straight')]
  assert max(ages) <= 4 + 3 - 1 and ages == [r['shampoo_roots_age'] for r in lines(tmp_path / 'resumed')]
  assert [r['loss'] for r in lines(tmp_path / 'straight')] == [r['loss'] for r in lines(tmp_path / 'resumed')]
