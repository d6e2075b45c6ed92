"""Shampoo's inverse p-th roots (optimizers/shampoo/roots.py) against float64 eigh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import exported_hlo
from optimizers.shampoo import roots as roots_lib

U = 2.0**-24  # float32 unit roundoff


def power(a, exponent):
  """Symmetric positive definite `a` to a real power, in float64 through eigh."""
  w, v = np.linalg.eigh(np.asarray(a, np.float64))
  return (v * w**exponent) @ v.T


@pytest.mark.parametrize('p', [2, 4, 8])
@pytest.mark.parametrize('method', ['newton', 'eigh'])
def test_inverse_pth_root_accuracy(method, p):
  """Float32 roots of 8x8 matrices with condition numbers 1 to 1e6 against float64 eigh.

  A float32 method that is backward stable perturbs A by about u ||A||, which moves the
  smallest eigenvalue by a relative kappa u and its root, the largest part of the result,
  by kappa u / p (u = 2^-24). The bound is twice that, with a floor for round-off at kappa = 1.
  """
  conditions = [1e0, 1e2, 1e4, 1e6]
  rng = np.random.default_rng(p)
  matrices = []
  for kappa in conditions:
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    a = (q * np.logspace(0, -np.log10(kappa), 8)) @ q.T
    matrices.append((a + a.T) / 2)
  matrices = np.stack(matrices).astype(np.float32)
  roots, errors = roots_lib.inverse_pth_root(jnp.asarray(matrices), p, epsilon=1e-12,
                                             relative_epsilon=False, method=method)
  assert roots.shape == matrices.shape and errors.shape == (4,)
  for a, root, kappa in zip(matrices, np.asarray(roots, np.float64), conditions):
    expected = power(a + 1e-12 * np.eye(8), -1 / p)
    relative_error = np.linalg.norm(root - expected) / np.linalg.norm(expected)
    assert relative_error < 1e-5 + 2 * kappa * U / p, (kappa, relative_error)
  errors = np.asarray(errors)
  assert np.all(np.isfinite(errors))
  if method == 'newton':  # a converged iteration leaves max|M - I| at a few ulps
    assert np.all(errors < 1e-4), errors
  else:
    np.testing.assert_array_equal(errors, 0.0)


@pytest.mark.parametrize('p', [2, 4, 8])
def test_scaled_newton_converges_in_a_few_steps_whatever_the_condition_number(p):
  """Scaling M before each step lifts small eigenvalues far faster than the plain iteration, which
  took 17 steps at condition number 1e6 (p = 4, 13 at 1e4): 12 suffice at 1e2..1e6 (measured: p = 2
  needs 12, p = 4 10, p = 8 9)."""
  rng = np.random.default_rng(p)
  matrices = []
  for kappa in (1e0, 1e2, 1e4, 1e6):
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    a = (q * np.logspace(0, -np.log10(kappa), 16)) @ q.T
    matrices.append((a + a.T) / 2)
  matrices = jnp.asarray(np.stack(matrices), jnp.float32)
  roots, errors = roots_lib.inverse_pth_root(matrices, p, epsilon=1e-6, relative_epsilon=True, iterations=12)
  assert np.all(np.asarray(errors) < 1e-5), errors
  _, too_few = roots_lib.inverse_pth_root(matrices, p, epsilon=1e-6, relative_epsilon=True, iterations=5)
  assert np.max(np.asarray(too_few)) > 1e-2  # the cap binds: a slower iteration would fail above


@pytest.mark.parametrize('method', ['newton', 'eigh'])
def test_inverse_pth_root_relative_epsilon(method):
  """The ridge is epsilon x lambda_max: a 1e-3 ridge takes kappa = 1e6 down to about 1e3."""
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
  a = (q * np.logspace(1, -5, 8)) @ q.T
  a = ((a + a.T) / 2).astype(np.float32)
  roots, _ = roots_lib.inverse_pth_root(jnp.asarray(a[None]), 4, epsilon=1e-3, relative_epsilon=True,
                                        method=method)
  expected = power(a + 1e-3 * np.linalg.eigvalsh(a.astype(np.float64)).max() * np.eye(8), -1 / 4)
  relative_error = np.linalg.norm(np.asarray(roots[0], np.float64) - expected) / np.linalg.norm(expected)
  assert relative_error < 1e-5 + 2 * 1e3 * U / 4, relative_error


def _conditioned(rng, size, kappa):
  q, _ = np.linalg.qr(rng.standard_normal((size, size)))
  a = (q * np.logspace(0, -np.log10(kappa), size)) @ q.T
  return (a + a.T) / 2


def _relative_errors(roots, matrices, p, epsilon):
  out = []
  for root, a in zip(np.asarray(roots, np.float64), matrices):
    expected = power(a.astype(np.float64) + epsilon * np.eye(len(a)), -1 / p)
    out.append(np.linalg.norm(root - expected) / np.linalg.norm(expected))
  return np.asarray(out)


@pytest.mark.parametrize('p', [4, 6])
def test_warm_eigh_roots_against_float64_as_the_statistics_drift(p):
  """root_method='warm_eigh' over three refreshes of 8x8 statistics with condition numbers 1 to 1e6.

  The first refresh starts from the identity basis and must recompute it (eigh); a drift of 0.5% of
  the smallest eigenvalue leaves the basis in place, and the root carries the first-order correction's
  second-order error (below the tolerance squared), where the basis's diagonal alone would miss the
  bound (well-conditioned, where the bound is tight); statistics rotated anew recompute it.
  Every root stays within the float32 bound of `test_inverse_pth_root_accuracy` plus that term.
  """
  rng = np.random.default_rng(p)
  tolerance = 0.02
  for conditions in ([1e0, 1e1, 1e2], [1e4, 1e6]):
    first = np.stack([_conditioned(rng, 8, kappa) for kappa in conditions]).astype(np.float32)
    noise = rng.standard_normal((len(conditions), 8, 3))
    drifted = (first + 5e-3 * np.einsum('nik,njk->nij', noise, noise) / 3
               * np.asarray(conditions)[:, None, None] ** -1.0).astype(np.float32)
    rotated = np.stack([_conditioned(rng, 8, kappa) for kappa in conditions]).astype(np.float32)
    bound = 1e-5 + 2 * np.asarray(conditions) * U / p + tolerance ** 2
    basis = jnp.broadcast_to(jnp.eye(8), first.shape)
    for step, matrices in enumerate((first, drifted, rotated)):
      roots, errors, new_basis = roots_lib.warm_inverse_pth_root(
          jnp.asarray(matrices), basis, p, epsilon=1e-12, relative_epsilon=False, tolerance=tolerance)
      kept = bool(jnp.all(new_basis == basis))
      assert kept == (step == 1), (conditions, step)
      assert np.all(np.asarray(errors) <= tolerance)
      np.testing.assert_array_less(_relative_errors(roots, matrices, p, 1e-12), bound)
      if kept and conditions[-1] <= 1e2:  # the first-order correction is what keeps the root within the bound
        projected = np.einsum('nji,njk,nkl->nil', basis, matrices.astype(np.float64), basis)
        diagonal_only = np.einsum('nij,nj,nkj->nik', basis, np.diagonal(projected, axis1=1, axis2=2) ** (-1 / p), basis)
        assert np.any(_relative_errors(diagonal_only, matrices, p, 1e-12) > bound)
      np.testing.assert_allclose(np.asarray(new_basis[0] @ new_basis[0].T), np.eye(8), atol=1e-5)
      basis = new_basis


def test_warm_eigh_zero_statistics_have_no_root():
  roots, errors, _ = roots_lib.warm_inverse_pth_root(jnp.zeros((2, 4, 4)), jnp.broadcast_to(jnp.eye(4), (2, 4, 4)),
                                                     4, epsilon=1e-6, relative_epsilon=True, tolerance=0.02)
  assert np.all(np.isinf(np.asarray(errors)))


EIGH_STEPS = '''
import jax, jax.numpy as jnp
from configs.optimizer_defaults import BY_NAME
from optimizers import shampoo
hp = {k: BY_NAME['shampoo'][k] for k in shampoo.FIELDS}
hp.update(root_method='eigh', start_preconditioning_step=1, preconditioning_compute_steps=1)
tx = shampoo.scale_by_shampoo(**hp)
params = [jnp.zeros((256, 512)), jnp.zeros((512, 512))]  # 24 blocks of 128 x 128: two stacks of statistics
update = jax.jit(tx.update, donate_argnums=1)
state = tx.init(params)
for i in range(30):  # dispatched back to back, as the trainer's steps are
  grads = [jax.random.normal(jax.random.PRNGKey(i), p.shape) for p in params]
  directions, state = update(grads, state, params)
jax.block_until_ready(directions)
print('done')
'''


def test_eigh_roots_of_several_stacks_do_not_hang_the_cpu():
  """Two stacks' batched eigh side by side once held both threads of a 2-core CPU's pool, each
  waiting for its matrices to get one: the steps never finished (`roots.one_by_one`)."""
  import subprocess
  import sys

  from conftest import ROOT, subprocess_env
  result = subprocess.run([sys.executable, '-c', EIGH_STEPS], cwd=ROOT, env=subprocess_env(1),
                          capture_output=True, text=True, timeout=120)
  assert result.stdout.strip() == 'done', result.stderr[-2000:]


def test_stacked_eigh_is_eigh_on_cpu_and_jacobi_on_tpu():
  """Ascending eigenvalues and their eigenvectors; a TPU program asks for XLA's Jacobi kernel (the
  `Eigh` custom call) instead of the default QDWH divide-and-conquer, traced op by op and two
  orders of magnitude larger."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((3, 6, 6))
  a = np.float32(a @ np.swapaxes(a, -1, -2))
  eigenvalues, vectors = roots_lib.stacked_eigh(jnp.asarray(a))
  np.testing.assert_allclose(eigenvalues, np.linalg.eigvalsh(a), rtol=1e-4, atol=1e-4)
  assert np.all(np.diff(np.asarray(eigenvalues), axis=-1) >= 0)
  np.testing.assert_allclose(np.einsum('nij,nj,nkj->nik', vectors, eigenvalues, vectors), a, atol=1e-4)
  shape = jax.ShapeDtypeStruct((4, 512, 512), jnp.float32)
  tpu = exported_hlo(roots_lib.stacked_eigh, 'tpu', shape)
  assert 'custom_call @Eigh' in tpu
  assert len(tpu) * 20 < len(exported_hlo(jnp.linalg.eigh, 'tpu', shape))
  assert 'custom_call @Eigh' not in exported_hlo(roots_lib.stacked_eigh, 'cpu', shape)
