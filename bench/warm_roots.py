"""How accurate root_method='warm_eigh' is along a training run, and how often it recomputes its bases.

    python bench/warm_roots.py [--refreshes=60] [--every=10]

Trains bench/shampoo_overhead.py's MLP (256-512-512-10, batch 256) with Shampoo, roots every
`--every` updates, and after each block of `--every` updates takes the optimizer's statistics
(52 matrices of 128x128 and 4 of 10x10). On those statistics it computes every stack's inverse
root with Newton, with eigh, and with warm_eigh at several tolerances, each warm_eigh carrying its
own bases from one refresh to the next as the optimizer state does (the first from the identity).
Errors are max over the stacks of ||X - X64||_F / ||X64||_F against float64 eigh of the same
damped matrix (relative damping 1e-6, as the optimizer's default). Prints one markdown table: per
range of refreshes, each method's worst error, and for warm_eigh how many stacks
recomputed their basis with eigh, of all the stacks refreshed in that range.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # as main.py: single-threaded LAPACK
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import shampoo_overhead as overhead  # noqa: E402
from errors import ArgumentParser  # noqa: E402
from optimizers import shampoo  # noqa: E402
from trainer import host_memory  # noqa: E402

TOLERANCES = (0.01, 0.02, 0.05, 0.1)
EPSILON = 1e-6


def main():
  parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--refreshes', type=int, default=60)
  parser.add_argument('--every', type=int, default=10)
  args = parser.parse_args()
  host_memory.keep_freed_memory()
  trainer = overhead.Trainer(overhead.build('shampoo', preconditioning_compute_steps=args.every,
                                            start_preconditioning_step=1), 256)
  warm = {t: jax.jit(lambda a, q, p, t=t: shampoo.warm_inverse_pth_root(
      a, q, p, epsilon=EPSILON, relative_epsilon=True, tolerance=t), static_argnums=2) for t in TOLERANCES}
  cold = {m: jax.jit(lambda a, p, m=m: shampoo.inverse_pth_root(a, p, epsilon=EPSILON, relative_epsilon=True,
                                                                method=m)[0], static_argnums=1)
          for m in ('newton', 'eigh')}
  bases, rows = None, []
  for refresh in range(args.refreshes):
    trainer.run(args.every)
    stats = {k: np.asarray(v) for k, v in shampoo.find_state(trainer.opt_state).stats.items()}
    if bases is None:
      bases = {t: {k: jnp.broadcast_to(jnp.eye(v.shape[-1]), v.shape) for k, v in stats.items()} for t in TOLERANCES}
    references = {k: overhead.reference_roots(v, shampoo.blocking.bucket_exponent(k), EPSILON) for k, v in stats.items()}
    row = {'refresh': refresh + 1, 'stacks': len(stats)}
    for method, fn in cold.items():
      row[method] = max(overhead.max_relative_error(fn(jnp.asarray(v), shampoo.blocking.bucket_exponent(k)),
                                                    references[k]) for k, v in stats.items())
    for t in TOLERANCES:
      errors, recomputed = [], 0
      for k, v in stats.items():
        roots, _, basis = warm[t](jnp.asarray(v), bases[t][k], shampoo.blocking.bucket_exponent(k))
        recomputed += int(not bool(jnp.all(basis == bases[t][k])))
        bases[t][k] = basis
        errors.append(overhead.max_relative_error(roots, references[k]))
      row[t] = (max(errors), recomputed)
    rows.append(row)
    print(row, file=sys.stderr, flush=True)

  ranges = [(1, 1), (2, 10), (11, 30), (31, args.refreshes)]
  print(f'- Command: `python bench/warm_roots.py --refreshes={args.refreshes} --every={args.every}`; '
        f'jax {jax.__version__}.\n')
  print('| refreshes | newton | eigh | ' + ' | '.join(f'warm_eigh {t} (eigh recomputes)' for t in TOLERANCES) + ' |')
  print('|---|---|---|' + '---|' * len(TOLERANCES))
  for low, high in ranges:
    chosen = [r for r in rows if low <= r['refresh'] <= high]
    if not chosen:
      continue
    cells = [f'{max(r[m] for r in chosen):.2g}' for m in ('newton', 'eigh')]
    cells += [f'{max(r[t][0] for r in chosen):.2g} ({sum(r[t][1] for r in chosen)} of {sum(r["stacks"] for r in chosen)})'
              for t in TOLERANCES]
    print(f'| {low}–{high} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
