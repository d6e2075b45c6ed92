"""Width parameterizations: `standard`, and `mup` for each optimizer, as data.

Under `mup` (Yang & Hu 2021 for SGD and Adam; Ishikawa & Karakida, ICLR 2024,
Table 1, for K-FAC and Shampoo) the initialization and the learning rate of each
parameter scale with the width multiplier m = width / base_width according to the
parameter's role, which the task declares (tasks/base.py, ROLES):

  input   fan-in fixed, fan-out grows: embeddings, first layers, and vectors
          (biases, norm scales), which muP treats as input weights
  hidden  both grow
  output  fan-in grows, fan-out fixed: the read-out
  fixed   neither grows (an output bias over classes, a linear model)

In the abc-parameterization with no forward multipliers (a = 0), muP sets
init std ~ fan_in^-b with b = 0 / 1/2 / 1 for input / hidden / output, and learning
rate eta * m^-c with c from the optimizer's row of LR_EXPONENTS. Models here
initialise with fan-in scaled (std ~ fan_in^-1/2) initialisers, so relative to
`standard` the init multiplier is m^INIT_EXPONENTS[role]: only the read-out shrinks.
At m = 1 every multiplier is 1, so `mup` at base_width equals `standard` exactly.

Which row an optimizer uses:
  * Shampoo without grafting: its own row for a matrix with one unblocked statistic per
    side (exponent 1/4 each: c = -(1-e), 0, 1-e with e = 1/2, the roots' total exponent).
    A matrix cut into fixed-size blocks is, as the width grows, many small normalised
    blocks, like Adam's many normalised coordinates: Adam's row. Parameters Shampoo
    does not precondition get the raw gradient: SGD's row.
  * Grafting sets every block's update norm to the graft's, so grafted Shampoo follows
    the graft's row (Adam's for RMSprop / Adagrad grafting, SGD's for SGD grafting).
  * K-FAC: c = 0 everywhere. Its damping: the seed damps the factors as rho_A ~ fan_in and
    rho_B ~ 1/fan_out (counting only dimensions that grow; b = 1 at the read-out).
    kfac-jax damps each block by one lambda, split between the factors pi-adjusted
    (rho_A = pi sqrt(lambda), rho_B = sqrt(lambda) / pi), so each block gets the
    product lambda = rho_A rho_B: x m^-1 for input blocks, x 1 hidden, x m output
    (DAMPING_EXPONENTS; a block takes its kernel's role). Without it the input layer's
    first update shrinks with width (measured: trainer/coord_check.py).
  * Shampoo's matrix epsilon is Theta(1) relative to the largest eigenvalue of each
    statistic: `mup` requires `relative_matrix_epsilon`.
  * Adagrad: Adam's row (both are entry-wise normalised). LAMB and LARS normalise per
    layer by a trust ratio and have no muP row here.
"""

import math
from typing import Any, NamedTuple

import jax
import ml_collections

from errors import ConfigError
from optimizers import shampoo

PARAMETERIZATIONS = ('standard', 'mup')

# Init std x m^exponent, relative to a fan-in scaled (b = 1/2) initialiser: b - 1/2, negated.
INIT_EXPONENTS = dict(input=0.0, hidden=0.0, output=-0.5, fixed=0.0)

# c in learning rate x m^-c, per role.
LR_EXPONENTS = {
    'sgd': dict(input=-1.0, hidden=0.0, output=1.0, fixed=0.0),
    'adam': dict(input=0.0, hidden=1.0, output=1.0, fixed=0.0),
    'shampoo': dict(input=-0.5, hidden=0.0, output=0.5, fixed=0.0),
    'kfac': dict(input=0.0, hidden=0.0, output=0.0, fixed=0.0),
}
# K-FAC's damping lambda x m^exponent per block, by the role of the block's kernel.
DAMPING_EXPONENTS = dict(input=-1.0, hidden=0.0, output=1.0, fixed=0.0)
GRAFT_ROWS = {'sgd': 'sgd', 'adagrad': 'adam', 'rmsprop': 'adam'}


def check(config: ml_collections.ConfigDict) -> None:
  """Rejects a parameterization the runner cannot apply, naming the field."""
  if config.parameterization not in PARAMETERIZATIONS:
    raise ConfigError(f'parameterization={config.parameterization!r}: choose one of '
                      f'{", ".join(PARAMETERIZATIONS)}')
  if config.parameterization == 'standard':
    return
  if config.base_width <= 0:
    raise ConfigError(f'parameterization=mup needs base_width > 0 (the width its hyperparameters '
                      f'were tuned at), got {config.base_width}')
  optimizer = config.optimizer
  if optimizer.name not in ('sgd', 'adam', 'adagrad', 'shampoo', 'kfac'):
    raise ConfigError(f'parameterization=mup has no rule for optimizer {optimizer.name!r}; '
                      f'it has rules for sgd, adam, adagrad, shampoo, kfac')
  if optimizer.name == 'shampoo' and not optimizer.relative_matrix_epsilon:
    raise ConfigError('parameterization=mup with shampoo needs optimizer.relative_matrix_epsilon=True: '
                      'an absolute epsilon changes meaning as the statistics grow with width')


def _row(optimizer: ml_collections.ConfigDict, path: str, shape: tuple[int, ...]) -> str:
  """Which LR_EXPONENTS row the parameter at `path` follows under `optimizer`."""
  if optimizer.name == 'adagrad':
    return 'adam'
  if optimizer.name != 'shampoo':
    return optimizer.name
  graft = optimizer.graft_type.removesuffix('_normalized')
  if graft != 'none':
    return GRAFT_ROWS[graft]
  kind = shampoo.preconditioner_kind(shape, {k: optimizer[k] for k in shampoo.FIELDS})
  if kind == 'merged':
    raise ConfigError(f'parameterization=mup with ungrafted shampoo: {path} {shape} is preconditioned with merged '
                      f'dimensions or an exponent override, which has no muP rule; set '
                      f'merge_small_dims_block_size=1 and exponent_override=0, or graft')
  return {'whole': 'shampoo', 'blocked': 'adam', 'graft': 'sgd'}[kind]


class Multipliers(NamedTuple):
  """Per-parameter factors (trees like the parameters, of floats)."""
  init: Any     # on the initial values
  lr: Any       # on the learning rate
  damping: Any  # on K-FAC's damping, for the block holding the parameter


def multipliers(config: ml_collections.ConfigDict, params, roles, ratio: float) -> Multipliers:
  """The multipliers for `params` (arrays or shapes) with the given roles at width ratio m."""
  by_role = lambda exponents: jax.tree.map(lambda role: ratio ** exponents[role], roles)
  lr = jax.tree_util.tree_map_with_path(
      lambda path, role, p: ratio ** -LR_EXPONENTS[_row(config.optimizer, jax.tree_util.keystr(path),
                                                        tuple(p.shape))][role], roles, params)
  return Multipliers(by_role(INIT_EXPONENTS), lr, by_role(DAMPING_EXPONENTS))


def apply_init(params, multipliers):
  """params x multipliers, leaf by leaf (exactly params where the multiplier is 1)."""
  return jax.tree.map(lambda p, k: p if k == 1 else p * k, params, multipliers)


def describe(roles, multipliers: Multipliers) -> list[str]:
  """One line per parameter: path, role and its multipliers; for the log."""
  flat = jax.tree_util.tree_flatten_with_path(roles)[0]
  columns = [jax.tree.leaves(tree) for tree in multipliers]
  return [f'{jax.tree_util.keystr(path)}: {role}, ' + ', '.join(
              f'{name} x{values[i]:.4g}' for name, values in zip(Multipliers._fields, columns))
          for i, (path, role) in enumerate(flat)]


def is_identity(multipliers) -> bool:
  return all(math.isclose(k, 1.0) for k in jax.tree.leaves(multipliers))
