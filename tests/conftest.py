"""Test set-up: 8 simulated CPU devices (set before JAX starts) and generated data in a temp dir."""

import importlib
import os
import sys

# Compilation is most of a test's few steps: LLVM at -O0 halves it (the suite took 7 min instead of
# 10 on 2 cores) and leaves the XLA graph, hence the results, as they are.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), TEST_XLA_FLAGS, '--xla_force_host_platform_device_count=8']).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # as main.py: no oneDNN notice on stderr
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # as main.py: single-threaded LAPACK
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import trainer  # noqa: E402
from tasks.layers import REMAT_POLICIES  # noqa: E402

trainer.host_memory.keep_freed_memory()  # as main.py: in-process runs get its allocator policy


# The files that take longest, longest first (per-file seconds of the 60 slowest tests of
# `pytest --durations=60`, 2026-12-07: 99 down to 23). `make test` hands whole files to whichever of
# its workers is free, in collection order (--dist loadfile): collected last, a long file would run
# alone at the end.
SLOWEST_FILES = ('test_transformer.py', 'test_cli.py', 'test_kfac.py', 'test_bert.py', 'test_report.py',
                 'test_plan.py', 'test_multihost.py', 'test_shampoo.py', 'test_resnet.py', 'test_trainer.py',
                 'test_embeddings.py', 'test_dlrm.py', 'test_prefetch.py', 'test_launch.py', 'test_chaos.py',
                 'test_parameterization.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FILES)))  # stable: the rest as collected


@pytest.fixture(scope='session', autouse=True)
def data_dir(tmp_path_factory):
  """All tests share one generated data set (generation is the slow part of set-up)."""
  path = str(tmp_path_factory.mktemp('data'))
  os.environ['SHAMPOO_DATA_DIR'] = path
  return path


def subprocess_env(devices: int) -> dict:
  """This process's environment for a child process that simulates `devices` CPU devices."""
  flags = [flag for flag in os.environ['XLA_FLAGS'].split()
           if not flag.startswith('--xla_force_host_platform_device_count=')]
  return dict(os.environ, XLA_FLAGS=' '.join(flags + [f'--xla_force_host_platform_device_count={devices}']))


def exported_hlo(fn, platform: str, *shapes) -> str:
  """The StableHLO `fn` lowers to for `platform` ('tpu', 'cuda', 'cpu'): exporting needs no such device."""
  return jax.export.export(jax.jit(fn), platforms=[platform])(*shapes).mlir_module()


def load_config(name: str, size: str = 'tiny', **overrides):
  """configs/<name>.py at `size`, with dotted overrides given as a__b=value, locked like main.py."""
  config = importlib.import_module(f'configs.{name}').get_config(size)
  config.update_from_flattened_dict({k.replace('__', '.'): v for k, v in overrides.items()})
  config.lock()
  return config


def assert_sharded_run_matches_one_device(name: str, workdir, data: int, model: int, **overrides) -> tuple[dict, dict]:
  """configs/<name>.py:tiny trained on one device and on all 8 (data x model): equal losses.

  Returns both run summaries, for task-specific checks.
  """
  one = trainer.run(load_config(name, **overrides), str(workdir / 'one'), name, devices=jax.devices()[:1])
  eight = trainer.run(load_config(name, **overrides, mesh__data=data, mesh__model=model), str(workdir / 'eight'),
                      name, devices=jax.devices())
  for split in ('final_eval', 'final_train'):
    np.testing.assert_allclose(eight[split]['loss'], one[split]['loss'], rtol=2e-4, err_msg=split)
  return one, eight


def remat_policies(jaxpr) -> list:
  """The policy of every jax.checkpoint region in `jaxpr`, nested jaxprs included."""
  checkpoint = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive
  policies = []
  for eqn in jaxpr.eqns:
    if eqn.primitive is checkpoint:
      policies.append(eqn.params['policy'])
    for inner in jax.extend.core.jaxprs_in_params(eqn.params):
      policies += remat_policies(inner)
  return policies


def assert_remat_changes_nothing(loss_gradients_and_policies, remat: str, blocks: int) -> None:
  """`remat` keeps the parameters, loss and gradients of 'none', and puts one checkpoint region with
  its policy around each of the `blocks` blocks. `loss_gradients_and_policies(remat)` returns
  (params, (loss, gradients), policies of the gradient's checkpoint regions)."""
  params, (value, grads), policies = loss_gradients_and_policies('none')
  remat_params, (remat_value, remat_grads), remat_policy = loss_gradients_and_policies(remat)
  assert jax.tree.structure(remat_params) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, remat_params, params)
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat_grads, grads)
  assert not policies
  assert remat_policy == [REMAT_POLICIES[remat]] * blocks
