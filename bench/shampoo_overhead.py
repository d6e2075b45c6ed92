"""What Shampoo (and K-FAC) cost over Adam on a small MLP: step time, arithmetic floor, roots, memory.

    python bench/shampoo_overhead.py [--steps=200] [--batch=256] [--skip-roots]

Runs on whatever device JAX has (first device; named in the header) and prints
four markdown tables:

1. Step time. MLP 256-512-512-10 (ReLU, softmax cross-entropy, float32, parameters
   from PRNGKey(0)) on 16 random batches cycled through (one fixed batch is memorised
   until the loss is exactly 0, which also changes how long Newton roots take).
   One step = value_and_grad + optimizer update + apply_updates in ONE jax.jit,
   parameters and optimizer state donated. Optimizers come from the project registry, as users get them:
   `optimizers.build(base.optimizer('adam', learning_rate=1e-3), schedule)` and
   `base.optimizer('shampoo', learning_rate=1e-3, preconditioning_compute_steps=K,
   start_preconditioning_step=1)` for K in 1, 10, 100 (other fields default: block
   128, graft rmsprop_normalized, Newton roots); K=10 with eigh roots; K=10 and 100 with
   warm_eigh roots (eigenbases kept between refreshes); no refresh at all; K=10 with
   root_refresh='async' (roots computed beside the steps, installed 10 updates later, driven
   by `shampoo.AsyncRoots` as the trainer drives it), with Newton roots on the devices and on
   the host's CPU, and with warm_eigh roots; SOAP with its eigenbases refreshed every 10
   updates and every update (`base.optimizer('soap', precondition_frequency=K)`, other fields its
   defaults). Each optimizer is compiled, warmed
   up for max(K) + 1 steps (so the refresh at `start_preconditioning_step` is behind
   us), then timed over 3 windows of `--steps` steps (block_until_ready at the end
   of each window), the windows of all optimizers interleaved so that load from
   elsewhere on a shared machine hits them alike; ms/step is the median window /
   steps. A window must be a multiple of every K so that each one holds exactly
   steps / K root refreshes. Compile seconds, the spread of the 3 windows, the
   refreshes and failed roots counted by the optimizer state, and the final loss
   are printed beside the time. The process keeps freed host memory as main.py does
   (trainer/host_memory.py): otherwise a step whose temporaries exceed 32 MiB faults
   them in afresh every step.

2. Arithmetic floor, per step, beside each Shampoo time. For a weight of shape
   (d_1..d_k) cut into blocks b_i = min(d_i, B) (B = block_size = 128, ragged
   blocks zero-padded to full size as the optimizer does), N = prod ceil(d_i / b_i)
   blocks:
       statistics  G_(i) G_(i)^T, every mode i:   N * sum_i 2 b_i^2 prod_{j!=i} b_j = 2 N prod(b) sum(b)
       preconditioning, one product per mode:    N * sum_i 2 b_i prod(b)           = 2 N prod(b) sum(b)
       extra = sum over weights of 4 N prod(b) sum(b)      (biases: rank 1, graft only)
       fwd_bwd = 3 * 2 * batch * sum over weights of fan_in * fan_out
       floor ratio = 1 + extra / fwd_bwd
   Adam's and the graft's elementwise work and the root refreshes (amortised over K)
   are left out, so the floor is the same for every K. For 256-512-512-10 at
   batch 256: extra = 24 full 128x128 blocks x 16.78 MFLOP + 4 blocks of 128x10 x
   0.71 MFLOP = 405.5 MFLOP, fwd_bwd = 611.8 MFLOP, floor = 1.663.

3. Roots (unless --skip-roots): one jitted `shampoo.inverse_pth_root(a, 4,
   epsilon=1e-6, relative_epsilon=True, method=...)`, Newton vs eigh, compiled
   first, median of 5 runs, on stacks of random SPD matrices Q diag(logspace(0, -4))
   Q^T (condition number 1e4, float32): 16 of 128x128 and 4 of 512x512. The error
   column is the one the function returns (max |M - I| for Newton, 0 / inf for
   eigh); the rel. error column is max over the stack of ||X - X64|| / ||X64||
   (Frobenius) against a float64 NumPy eigh of the same damped matrix. Then a
   full root refresh of the MLP by each method: every stack of the optimizer state's `stats`
   (exponent from its key, `blocking.bucket_exponent`). The statistics are zero right after
   init (a zero matrix has no root and Newton exits at once), so the refresh is
   timed on the statistics of section 1's K=10 warm_eigh run after its warm-up and timed
   steps, up to 10 updates newer than the eigenbases its state kept, from which warm_eigh
   starts (its error column: the largest off-diagonal ratio in the basis used).

4. Optimizer-state bytes / parameter bytes: sum of nbytes over the leaves of
   tx.init(params), for Adam, Shampoo, SOAP and K-FAC (K does not change the state).
"""

import argparse
import functools
import math
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # as main.py: single-threaded LAPACK

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optimizers  # noqa: E402
from configs import base, optimizer_defaults  # noqa: E402
from errors import ArgumentParser  # noqa: E402
from optimizers import kfac, shampoo  # noqa: E402
from trainer import host_memory  # noqa: E402
from tasks import losses  # noqa: E402

SIZES = (256, 512, 512, 10)
LEARNING_RATE = 1e-3
KS = (1, 10, 100)
WINDOWS = 3
ROOT_RUNS = 5
BATCHES = 16  # random batches cycled through, so that the loss does not collapse to exactly 0
ROOT_STACKS = ((16, 128), (4, 512))  # (count, size)
WARM_EIGH_TOLERANCE = optimizer_defaults.BY_NAME['shampoo']['warm_eigh_tolerance']


# ---------------------------------------------------------------- model

def init_params(key, sizes=SIZES):
  params = {}
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    key, sub = jax.random.split(key)
    params[f'dense{i}'] = {
        'kernel': jax.random.normal(sub, (fan_in, fan_out), jnp.float32) * math.sqrt(2.0 / fan_in),
        'bias': jnp.zeros((fan_out,), jnp.float32)}
  return params


def loss_fn(params, x, labels):
  h = x
  layers = [params[k] for k in sorted(params)]
  for i, layer in enumerate(layers):
    h = h @ layer['kernel'] + layer['bias']
    if i < len(layers) - 1:
      h = jax.nn.relu(h)
  return losses.softmax_cross_entropy(h, labels)  # declared to K-FAC once it is loaded


def make_step(tx):
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, xs, labels, i):
    x, y = jax.lax.dynamic_index_in_dim(xs, i, keepdims=False), labels[i]
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    loss_args = (params, {}, jax.random.PRNGKey(0), {'x': x, 'labels': y})  # read by K-FAC only
    updates, opt_state = tx.update(grads, opt_state, params, loss_args=loss_args)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def build_async(refresh: str, **overrides) -> tuple[optax.GradientTransformation, shampoo.AsyncRoots]:
  """Shampoo with root_refresh=`refresh` ('async' or 'async_host') and the host's side of it, as the
  trainer builds them."""
  cfg = base.optimizer('shampoo', learning_rate=LEARNING_RATE, root_refresh=refresh, **overrides)
  params = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  return build('shampoo', root_refresh=refresh, **overrides), optimizers.async_roots(cfg, params, None, None)


def build(name: str, batch: int = 256, **overrides) -> optax.GradientTransformation:
  cfg = base.optimizer(name, learning_rate=LEARNING_RATE, **overrides)
  loss = None
  if optimizers.needs_loss(name):
    params = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    example = {'x': jax.ShapeDtypeStruct((batch, SIZES[0]), jnp.float32),
               'labels': jax.ShapeDtypeStruct((batch,), jnp.int32)}
    loss = kfac.LossContext(lambda p, _, __, b: loss_fn(p, b['x'], b['labels']),
                            (params, {}, jax.ShapeDtypeStruct((2,), jnp.uint32), example), 'mlp')
  return optimizers.build(cfg, optax.constant_schedule(LEARNING_RATE), loss)


def tree_bytes(tree) -> int:
  return sum(leaf.nbytes for leaf in jax.tree.leaves(tree))


# ---------------------------------------------------------------- 1. step time

class Trainer:
  """One optimizer's compiled step, its live (donated) params and state, and its timed windows."""

  def __init__(self, tx, batch: int, roots: shampoo.AsyncRoots | None = None):
    self.params = init_params(jax.random.PRNGKey(0))
    self.roots = roots
    self.xs = jax.random.normal(jax.random.PRNGKey(1), (BATCHES, batch, SIZES[0]), jnp.float32)
    self.labels = jax.random.randint(jax.random.PRNGKey(2), (BATCHES, batch), 0, SIZES[-1])
    self.indices = [jnp.asarray(i, jnp.int32) for i in range(BATCHES)]
    self.opt_state = tx.init(self.params)
    self.t, self.loss, self.windows = 0, None, []
    start = time.perf_counter()
    self.step = make_step(tx).lower(self.params, self.opt_state, self.xs, self.labels, self.indices[0]).compile()
    self.compile_s = time.perf_counter() - start

  def run(self, steps: int) -> float:
    """Seconds for `steps` steps, up to block_until_ready on the results."""
    start = time.perf_counter()
    for _ in range(steps):
      if self.roots:  # as trainer/loop.py drives root_refresh='async'
        self.opt_state = self.roots.before_update(self.opt_state, self.t)
      self.params, self.opt_state, self.loss = self.step(
          self.params, self.opt_state, self.xs, self.labels, self.indices[self.t % BATCHES])
      if self.roots:
        self.roots.after_update(self.opt_state, self.t)
      self.t += 1
    jax.block_until_ready((self.params, self.opt_state, self.loss))
    return time.perf_counter() - start

  @property
  def ms(self) -> float:
    return 1000 * float(np.median(self.windows)) / self.steps_per_window

  @property
  def spread(self) -> float:
    return (max(self.windows) - min(self.windows)) / float(np.median(self.windows))


def time_steps(trainers: dict, steps: int, warmup: int) -> None:
  """Warm every trainer up, then time WINDOWS windows each, interleaved (window w of every
  optimizer before window w + 1 of any), so that load from elsewhere on a shared machine
  falls on all of them alike rather than on whichever happened to run then."""
  for trainer in trainers.values():
    trainer.run(warmup)
    trainer.steps_per_window = steps
  for _ in range(WINDOWS):
    for trainer in trainers.values():
      trainer.windows.append(trainer.run(steps))


# ---------------------------------------------------------------- 2. arithmetic floor

def floor_flops(shapes, batch: int, block_size: int) -> tuple[int, int]:
  """(Shampoo's extra FLOPs per step, MLP forward+backward FLOPs); formula in the docstring."""
  extra = fwd_bwd = 0
  for shape in shapes:
    if len(shape) < 2:
      continue
    fwd_bwd += 3 * 2 * batch * math.prod(shape)
    blocks = [min(d, block_size) for d in shape]
    count = math.prod(-(-d // b) for d, b in zip(shape, blocks))
    extra += 4 * count * math.prod(blocks) * sum(blocks)
  return extra, fwd_bwd


# ---------------------------------------------------------------- 3. roots

def random_spd(count: int, size: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((count, size, size)))
  eigenvalues = np.logspace(0, -4, size)
  return np.einsum('nij,j,nkj->nik', q, eigenvalues, q).astype(np.float32)


def reference_roots(a: np.ndarray, p: int, epsilon: float) -> np.ndarray:
  """(A + eps lambda_max I)^{-1/p} in float64 (the exact lambda_max, not power iteration)."""
  a = a.astype(np.float64)
  w, v = np.linalg.eigh(a)
  w = w + epsilon * w[:, -1:]
  return np.einsum('nij,nj,nkj->nik', v, w ** (-1.0 / p), v)


def max_relative_error(roots, reference: np.ndarray) -> float:
  """max over the stack of ||X - X64||_F / ||X64||_F (nan if any root is not finite)."""
  diff = np.linalg.norm(np.asarray(roots, np.float64) - reference, axis=(-2, -1))
  return float(np.max(diff / np.linalg.norm(reference, axis=(-2, -1))))


def time_roots(stacks: dict, method: str, bases: dict | None = None) -> tuple[float, dict]:
  """Median ms of one jitted root computation over every stack (key -> ([n, b, b], p)), and outputs;
  warm_eigh starts from `bases` (key -> [n, b, b]), the eigenbases its optimizer state kept."""
  def root(p: int, basis):
    if method == 'warm_eigh':
      return lambda a: shampoo.warm_inverse_pth_root(a, basis, p, epsilon=1e-6, relative_epsilon=True,
                                                     tolerance=WARM_EIGH_TOLERANCE)[:2]
    return lambda a: shampoo.inverse_pth_root(a, p, epsilon=1e-6, relative_epsilon=True, method=method)

  fns = {key: jax.jit(root(p, bases and bases[key])) for key, (_, p) in stacks.items()}
  arrays = {key: jnp.asarray(a) for key, (a, _) in stacks.items()}
  outputs = {key: fns[key](arrays[key]) for key in stacks}  # compile
  jax.block_until_ready(outputs)
  runs = []
  for _ in range(ROOT_RUNS):
    start = time.perf_counter()
    outputs = {key: fns[key](arrays[key]) for key in stacks}
    jax.block_until_ready(outputs)
    runs.append(time.perf_counter() - start)
  return 1000 * float(np.median(runs)), outputs


# ---------------------------------------------------------------- main

def main():
  parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=200, help='timed window length, a multiple of every K')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--skip-roots', action='store_true', help='skip the root timings (section 3)')
  args = parser.parse_args()
  bad = [k for k in KS if args.steps % k]
  if bad:
    parser.error(f'--steps={args.steps} is not a multiple of K={bad}: windows would hold unequal refreshes')
  warnings.filterwarnings('ignore', message='.*donated buffers were not usable.*')
  kept = host_memory.keep_freed_memory()  # as main.py does

  device = jax.devices()[0]
  block_size = optimizer_defaults.BY_NAME['shampoo']['block_size']
  print(f'device {device.platform} ({device.device_kind}), {jax.device_count()} device(s), '
        f'jax {jax.__version__}, {os.cpu_count()} CPUs; freed host memory kept (trainer.host_memory): {kept}')
  print(f'MLP {"-".join(map(str, SIZES))}, batch {args.batch}, float32; windows of {args.steps} steps '
        f'after {max(KS) + 1} warm-up steps, median of {WINDOWS}\n')

  runs = [('adam', None, build('adam'))]
  for k in KS:
    runs.append((f'shampoo K={k}', k, build('shampoo', preconditioning_compute_steps=k,
                                             start_preconditioning_step=1)))
  # The same with eigh roots (faster than Newton on CPU), and with no refresh in the
  # timed windows at all: the per-step cost of statistics, preconditioning and grafting.
  runs.append((f'shampoo K={KS[1]} eigh', KS[1], build(
      'shampoo', preconditioning_compute_steps=KS[1], start_preconditioning_step=1, root_method='eigh')))
  # Eigenbases kept between refreshes, recomputed (eigh) only when the statistics drift from them.
  for k in KS[1:]:
    runs.append((f'shampoo K={k} warm_eigh', k, build(
        'shampoo', preconditioning_compute_steps=k, start_preconditioning_step=1, root_method='warm_eigh')))
  runs.append(('shampoo, no refresh', 0, build(
      'shampoo', preconditioning_compute_steps=10**9, start_preconditioning_step=1)))
  # Roots refreshed beside the steps (root_refresh='async', staleness K), installed K updates later;
  # then the same with the roots computed on the host's CPU (on a CPU-only machine, the same device).
  async_roots = {}
  for refresh, where, method in (('async', 'async', 'newton'), ('async_host', 'async on the host CPU', 'newton'),
                                 ('async', 'async warm_eigh', 'warm_eigh')):
    tx, roots = build_async(refresh, preconditioning_compute_steps=KS[1], start_preconditioning_step=1,
                            root_method=method)
    runs.append((f'shampoo K={KS[1]} {where}', KS[1], tx))
    async_roots[runs[-1][0]] = roots
  # SOAP (Adam in the eigenbases of Shampoo's statistics) with its bases refreshed every K updates.
  for k in (KS[1], 1):
    runs.append((f'soap, bases every {k}', k, build('soap', precondition_frequency=k)))
  # K-FAC with kfac-jax's defaults: factors every step, inverses every 5 (a window of
  # --steps holds steps / 5 inverse refreshes).
  runs.append(('kfac (inverses every 5)', None, build('kfac', args.batch)))
  params = init_params(jax.random.PRNGKey(0))
  extra, fwd_bwd = floor_flops([p.shape for p in jax.tree.leaves(params)], args.batch, block_size)
  floor = 1 + extra / fwd_bwd

  print('## Step time (one jit: value_and_grad + update + apply_updates)\n', flush=True)
  trainers = {name: Trainer(tx, args.batch, async_roots.get(name)) for name, _, tx in runs}
  time_steps(trainers, args.steps, max(KS) + 1)
  print('| optimizer | ms / step | window spread | x Adam | floor x Adam | compile s | refreshes | failed roots '
        '| final loss |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name, k, _ in runs:
    r = trainers[name]
    s = shampoo.find_state(r.opt_state)
    counts = ('-', '-') if s is None else (int(s.root_refreshes), int(s.failed_roots))
    floor_cell = '1' if name == 'adam' else f'{floor:.3f}' if name.startswith('shampoo') else '-'
    print(f'| {name} | {r.ms:.3f} | {100 * r.spread:.0f}% | {r.ms / trainers["adam"].ms:.2f} | {floor_cell} | '
          f'{r.compile_s:.2f} | {counts[0]} | {counts[1]} | {float(r.loss):.4g} |')
  total = max(KS) + 1 + WINDOWS * args.steps
  print(f'\nwindows interleaved across optimizers; window spread: (slowest - fastest) / median window. '
        f'refreshes / failed roots: cumulative over all {total} steps, from the optimizer state.')

  print(f'\n## Arithmetic floor (block {block_size}, batch {args.batch})\n')
  print('| Shampoo extra MFLOP / step | MLP fwd+bwd MFLOP / step | floor ratio 1 + extra / fwd_bwd |')
  print('|---|---|---|')
  print(f'| {extra / 1e6:.1f} | {fwd_bwd / 1e6:.1f} | {floor:.3f} |')

  if not args.skip_roots:
    print('\n## Inverse 4th roots (one jitted call, median of 5)\n')
    print('| matrices | method | ms | max returned error | max rel. error vs float64 |')
    print('|---|---|---|---|---|')
    for count, size in ROOT_STACKS:
      a = random_spd(count, size)
      reference = reference_roots(a, 4, 1e-6)
      for method in ('newton', 'eigh'):  # warm_eigh needs a kept basis: the MLP row below
        ms, out = time_roots({'stack': (a, 4)}, method)
        roots, errors = out['stack']
        print(f'| {count} x {size}x{size}, cond 1e4 | {method} | {ms:.2f} | {float(jnp.max(errors)):.3g} | '
              f'{max_relative_error(roots, reference):.3g} |', flush=True)
    source = f'shampoo K={KS[1]} warm_eigh'
    state = shampoo.find_state(trainers[source].opt_state)
    stacks = {key: (np.asarray(v), shampoo.blocking.bucket_exponent(key)) for key, v in state.stats.items()}
    label = ' + '.join(f'{v.shape[0]} x {v.shape[1]}x{v.shape[2]}' for v, _ in stacks.values())
    references = {key: reference_roots(a, p, 1e-6) for key, (a, p) in stacks.items()}
    for method in shampoo.ROOT_METHODS:
      ms, out = time_roots(stacks, method, state.bases)
      worst = max(float(jnp.max(errors)) for _, errors in out.values())
      rel = max(max_relative_error(out[key][0], references[key]) for key in stacks)
      print(f'| MLP refresh ({label}; {source} stats) | {method} | {ms:.2f} | {worst:.3g} | {rel:.3g} |',
            flush=True)

  print('\n## Optimizer state / parameters (bytes)\n')
  print('| optimizer | state bytes | param bytes | state / params |')
  print('|---|---|---|---|')
  param_bytes = tree_bytes(params)
  for name, tx in (('adam', build('adam')), ('shampoo', runs[1][2]), ('soap', build('soap')), ('kfac', runs[-1][2])):
    state_bytes = tree_bytes(tx.init(params))
    print(f'| {name} | {state_bytes:,} | {param_bytes:,} | {state_bytes / param_bytes:.2f} |')


if __name__ == '__main__':
  main()
