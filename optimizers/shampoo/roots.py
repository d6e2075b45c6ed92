"""Inverse p-th roots of stacks of symmetric PSD matrices: Shampoo's numerical core.

Coupled Newton iteration, scaled before each step; or eigh; or (`warm_inverse_pth_root`) an
eigenbasis kept from the previous refresh, corrected to first order and recomputed only when the
statistics have drifted from it. Damped by epsilon (times the largest eigenvalue when relative).
Pure functions of arrays.

Every product passes `precision=HIGHEST` itself: a TPU multiplies float32 matrices in one
bfloat16 pass by default (a GPU in TF32), which stalls the Newton iteration past a condition
number of about 1e4; a `jax.default_matmul_precision` context would not reach the traced
program of a caller that does not set it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

ROOT_METHODS = ('newton', 'eigh', 'warm_eigh')
POWER_ITERATIONS = 50
HIGHEST = jax.lax.Precision.HIGHEST


def matmul(a, b):
  """a @ b in full float32, whatever the platform's default precision."""
  return jnp.matmul(a, b, precision=HIGHEST)


def _matrix_power(x, p: int):
  """x^p by repeated squaring, each product in full float32."""
  result = None
  while p:
    if p & 1:
      result = x if result is None else matmul(result, x)
    p >>= 1
    if p:
      x = matmul(x, x)
  return result


def _max_eigenvalue(a: jax.Array) -> jax.Array:
  """Largest eigenvalue of each PSD matrix in a [n, s, s] stack, by power iteration."""
  v = jax.random.normal(jax.random.PRNGKey(0), a.shape[:-1], a.dtype)

  def step(_, v):
    w = jnp.einsum('nij,nj->ni', a, v, precision=HIGHEST)
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-30)

  v = jax.lax.fori_loop(0, POWER_ITERATIONS, step, v / jnp.linalg.norm(v, axis=-1, keepdims=True))
  return jnp.einsum('ni,nij,nj->n', v, a, v, precision=HIGHEST)


def _newton_map(mu, p: int):
  """Where one coupled Newton step sends an eigenvalue mu of M (a polynomial in M)."""
  return mu * ((p + 1 - mu) / p) ** p


@functools.lru_cache(maxsize=None)
def _scaling_table(p: int) -> tuple[np.ndarray, np.ndarray]:
  """Best pre-step scale s of M, as a function of log10 of a lower bound a on its spectrum.

  M's spectrum lies in [a, 1]. Scaling M (and H by s^(1/p), which keeps H^p A = M) to
  [s a, s] before a step leaves the spectrum in [min(f(s a), f(s)), 1], f = `_newton_map`
  (its maximum is f(1) = 1); s maximising that minimum lifts a small eigenvalue
  s (1 + 1/p)^p-fold instead of (1 + 1/p)^p-fold. s is at most 0.7 (p + 1): the iteration
  diverges at p + 1, and the margin absorbs an underestimated largest eigenvalue.
  """
  log_a = np.linspace(-8.0, 0.0, 161)
  s = np.linspace(1.0, 0.7 * (p + 1), 4001)[None, :]
  worst = np.minimum(_newton_map(s * 10.0 ** log_a[:, None], p), _newton_map(s, p))
  return log_a, s[0, np.argmax(worst, axis=1)]


def _newton_root(a, p: int, iterations: int, tolerance: float, largest, smallest):
  """Coupled Newton iteration for a^{-1/p}: H -> a^{-1/p} while M = H^p a -> I.

  `largest` ([n]) is each matrix's largest eigenvalue (estimated), `smallest` ([n]) a lower
  bound on its smallest (its damping). M starts as a / largest, its spectrum in
  [smallest / largest, 1]. Unscaled, an eigenvalue far below 1 grows only (1 + 1/p)^p-fold per
  step (p = 4: 13 steps at condition number 1e4, 17 at 1e6); so while the tracked lower bound
  of M's spectrum is below 0.9, each step first scales M by `_scaling_table` (p = 4: 10 steps
  at either condition number). The bound is where the step maps the previous one, or
  1 - ||M - I||_F once that is larger. The error max|M - I| need not fall every step (a scaled
  step may raise it, and so may the first unscaled one), so a matrix stops at the tolerance or
  once its error grows by more than 20% in a later unscaled step (float32 round-off taking
  over), and keeps its best iterate.
  """
  identity = jnp.eye(a.shape[-1], dtype=a.dtype)
  m = a / largest[:, None, None]
  h = (largest ** (-1.0 / p))[:, None, None] * identity
  log_a, scales = (jnp.asarray(x, a.dtype) for x in _scaling_table(p))

  def error_and_bound(m, lower):
    """max|M - I|, and the spectrum's lower bound raised to 1 - ||M - I||_F where that is larger."""
    distance = m - identity
    frobenius = jnp.sqrt(jnp.sum(jnp.square(distance), axis=(-2, -1)))
    # A non-finite iterate has an infinite error (a max over NaNs need not be NaN on every backend).
    finite = jnp.all(jnp.isfinite(distance), axis=(-2, -1))
    error = jnp.where(finite, jnp.max(jnp.abs(distance), axis=(-2, -1)), jnp.inf)
    return error, jnp.maximum(lower, 1 - frobenius)

  error, lower = error_and_bound(m, jnp.clip(smallest / largest, 10.0 ** log_a[0], 1.0))

  def keep_going(carry):
    i, *_, active = carry
    return (i < iterations) & jnp.any(active)

  def step(carry):
    i, m, h, lower, error, best_h, best_error, active = carry
    scaled = lower < 0.9
    s = jnp.where(scaled, jnp.interp(jnp.log10(lower), log_a, scales), 1.0)
    expand = lambda x: x[:, None, None]
    scaled_m = expand(s) * m
    m_i = ((p + 1) * identity - scaled_m) / p
    new_m = matmul(_matrix_power(m_i, p), scaled_m)
    new_h = matmul(expand(s ** (1.0 / p)) * h, m_i)
    new_error, new_lower = error_and_bound(
        new_m, jnp.minimum(_newton_map(s * lower, p), _newton_map(s, p)))
    better = active & (new_error < best_error)
    return (i + 1, jnp.where(expand(active), new_m, m), jnp.where(expand(active), new_h, h),
            jnp.where(active, new_lower, lower), jnp.where(active, new_error, error),
            jnp.where(expand(better), new_h, best_h), jnp.where(better, new_error, best_error),
            active & (new_error > tolerance) & (scaled | (i == 0) | (new_error < 1.2 * error)))

  carry = (0, m, h, lower, error, h, error, error > tolerance)
  *_, best_h, best_error, _ = jax.lax.while_loop(keep_going, step, carry)
  return best_h, best_error


def one_by_one(fn, stack):
  """fn over a stack: batched, but on CPU one matrix per call. XLA's CPU runtime hands the matrices
  of a batched LAPACK kernel (eigh, QR) to its thread pool and waits for them: with as many such
  kernels side by side as the pool has threads (2 on a 2-core CPU) none progresses and the step
  hangs. One matrix runs in the calling thread. GPUs and TPUs keep the batched kernel."""
  return jax.lax.platform_dependent(stack, cpu=lambda s: jax.lax.map(fn, s), default=jax.vmap(fn))


def stacked_eigh(stack):
  """(eigenvalues [n, b], ascending; eigenvectors [n, b, b], a column each) of a stack of symmetric
  matrices. On TPU by Jacobi rotations: its default there, QDWH spectral divide-and-conquer, is
  traced into a program per matrix size that took 279 s and 10.2 GB of host memory to compile
  for one 2048 x 2048 matrix a core on a v3-256, and 4.11 GiB of temporaries a core; Jacobi
  took 3 s, 0.6 GB and 0.08 GiB (docs/shampoo.md). Elsewhere as `one_by_one`."""
  jacobi = lambda s: jax.lax.linalg.eigh(s, implementation=jax.lax.linalg.EighImplementation.JACOBI)[::-1]
  elsewhere = lambda s: one_by_one(lambda a: tuple(jnp.linalg.eigh(a)), s)
  return jax.lax.platform_dependent(stack, tpu=jacobi, default=elsewhere)


def _eigh_root(a, p: int):
  eigenvalues, vectors = stacked_eigh(a)
  powered = jnp.maximum(eigenvalues, 1e-30) ** (-1.0 / p)
  roots = jnp.einsum('nij,nj,nkj->nik', vectors, powered, vectors, precision=HIGHEST)
  return roots, jnp.where(jnp.all(eigenvalues > 0, axis=-1), 0.0, jnp.inf)


def _damping(largest, epsilon: float, relative: bool):
  """The eps added to each matrix: `epsilon`, or `epsilon` x its largest eigenvalue when `relative`."""
  return epsilon * largest if relative else jnp.full_like(largest, epsilon)


def _divided_differences(d, p: int):
  """[..., b, b] first divided differences f[d_i, d_j] of f(x) = x^(-1/p) at positive d ([..., b]):
  (f(d_i) - f(d_j)) / (d_i - d_j), f'(d_i) where equal. Close values (ratio r = high / low - 1 below
  0.05) would cancel in that quotient: there f[l(1 + r), l] = l^(c - 1) ((1 + r)^c - 1) / r, c = -1/p,
  by its binomial series to r^3 (truncation below 1e-6). No power or logarithm per pair: a refresh
  takes b^2 of them per matrix otherwise, as long as its products on a CPU."""
  c = -1.0 / p
  f = d ** c
  pairs = lambda x: (x[..., :, None], x[..., None, :])
  (d_i, d_j), (f_i, f_j), (g_i, g_j) = pairs(d), pairs(f), pairs(f / d)
  i_low = d_i <= d_j
  r = jnp.where(i_low, d_j / d_i, d_i / d_j) - 1
  series = jnp.where(i_low, g_i, g_j) * c * (1 + (c - 1) / 2 * r * (1 + (c - 2) / 3 * r * (1 + (c - 3) / 4 * r)))
  close = r < 0.05
  return jnp.where(close, series, (f_i - f_j) / jnp.where(close, 1.0, d_i - d_j))


def _off_diagonal_ratio(b):
  """max over i != j of |B_ij| / sqrt(B_ii B_jj) for each matrix of a [n, s, s] stack: how far an
  orthogonal basis is from diagonalizing the matrix it was projected from (0: an eigenbasis)."""
  scale = jnp.diagonal(b, axis1=-2, axis2=-1) ** -0.5
  off = b * (1 - jnp.eye(b.shape[-1], dtype=b.dtype))
  return jnp.max(jnp.abs(off) * scale[:, :, None] * scale[:, None, :], axis=(-2, -1))


def warm_inverse_pth_root(matrices, basis, p: int, *, epsilon: float, relative_epsilon: bool,
                          tolerance: float, padding=None):
  """(A + eps I)^{-1/p} for each symmetric PSD A of a [n, s, s] stack, from an orthogonal `basis`
  ([n, s, s], columns) kept from the previous refresh; returns the roots, their errors and the basis.

  B = Q^T (A + eps I) Q is diagonal when Q is an eigenbasis. Statistics change slowly between
  refreshes, so the previous eigenbasis leaves a small off-diagonal part E, and the root is
  Q f(B) Q^T with f(B) ~ diag(f(d)) + f[d_i, d_j] E_ij, f(x) = x^(-1/p) (Daleckii-Krein: exact to
  first order in E, its error second order). That costs four products of s x s matrices where
  Newton's iteration costs about forty. When any matrix's max |E_ij| / sqrt(d_i d_j) (returned as
  its error) exceeds `tolerance`, the stack's basis is recomputed with eigh first (the first
  refresh always does: the initial basis is the identity). The largest eigenvalue, for the
  relative damping, is the largest diagonal entry of Q^T A Q (exact for an eigenbasis).
  `padding` as in `inverse_pth_root`.
  """
  a = matrices.astype(jnp.float32)
  identity = jnp.eye(a.shape[-1], dtype=a.dtype)

  def project(q):
    """Q^T (A + damping I + lifted padding) Q, and the largest eigenvalue estimated in it."""
    b = matmul(jnp.swapaxes(q, -1, -2), matmul(a, q))
    largest = jnp.max(jnp.diagonal(b, axis1=-2, axis2=-1), axis=-1)
    damping = _damping(largest, epsilon, relative_epsilon)
    b = b + damping[:, None, None] * identity
    if padding is not None:  # + Q^T diag(padding x largest) Q
      b = b + matmul(jnp.swapaxes(q, -1, -2) * (padding * largest[:, None])[:, None, :], q)
    return b, largest

  def fresh(_):
    """An eigenbasis from eigh, the padding lifted so that it keeps unit vectors of its own."""
    lifted = a if padding is None else a + jax.vmap(jnp.diag)(padding * largest[:, None])
    q = stacked_eigh(lifted)[1]
    b, largest_in_q = project(q)
    return q, b, largest_in_q, _off_diagonal_ratio(b)

  b, largest = project(basis)
  drift = _off_diagonal_ratio(b)
  stale = ~jnp.all(drift <= tolerance)  # a NaN ratio is stale too
  basis, b, largest, drift = jax.lax.cond(stale, fresh, lambda _: (basis, b, largest, drift), None)
  d = jnp.diagonal(b, axis1=-2, axis2=-1)
  in_basis = jnp.where(identity > 0, jax.vmap(jnp.diag)(d ** (-1.0 / p)), _divided_differences(d, p) * b)
  roots = matmul(matmul(basis, in_basis), jnp.swapaxes(basis, -1, -2))
  finite = jnp.all(jnp.isfinite(roots), axis=(-2, -1)) & jnp.isfinite(drift) & (largest > 0)
  return roots, jnp.where(finite, drift, jnp.inf), basis


def inverse_pth_root(matrices, p: int, *, epsilon: float, relative_epsilon: bool,
                     method: str = 'newton', iterations: int = 100, tolerance: float = 1e-6,
                     padding=None):
  """(A + eps I)^{-1/p} for each symmetric PSD A of a [n, s, s] stack, and each root's error.

  eps is `epsilon` x lambda_max(A) when `relative_epsilon`. `padding` ([n, s], 1 where a
  coordinate only pads a ragged block) lifts those diagonal entries to lambda_max so the
  padding cannot worsen the conditioning; the real block is unaffected (block-diagonal).
  An all-zero matrix has no meaningful root: its error is reported as infinite.
  """
  a = matrices.astype(jnp.float32)
  largest = _max_eigenvalue(a)
  damping = _damping(largest, epsilon, relative_epsilon)
  diagonal = damping[:, None] * jnp.ones(a.shape[:-1], a.dtype)
  if padding is not None:
    diagonal = diagonal + padding * largest[:, None]
  a = a + jax.vmap(jnp.diag)(diagonal)
  if method == 'eigh':
    roots, errors = _eigh_root(a, p)
  else:
    roots, errors = _newton_root(a, p, iterations, tolerance, largest + damping, damping)
  return roots, jnp.where((largest > 0) & jnp.isfinite(errors), errors, jnp.inf)
