"""Shared defaults for every experiment config.

A config file calls `base.get_config(size)` and then fills in its task, its
optimizer and the size-dependent values. Field meanings are documented here
once; the README lists them too.
"""

import os

import ml_collections

from configs import optimizer_defaults
from errors import ConfigError

SIZES = ('tiny', 'paper')


def check_size(size: str) -> str:
  if size not in SIZES:
    raise ConfigError(f'unknown size {size!r}: choose one of {", ".join(SIZES)}')
  return size


def optimizer(name: str, **overrides) -> ml_collections.ConfigDict:
  """The optimizer block: every field `name`'s builder reads, defaults overridden by `overrides`."""
  if name not in optimizer_defaults.BY_NAME:
    raise ConfigError(f'unknown optimizer {name!r}; known: {", ".join(sorted(optimizer_defaults.BY_NAME))}')
  fields = {'name': name, **optimizer_defaults.COMMON, **optimizer_defaults.BY_NAME[name]}
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ConfigError(f'unknown {name} optimizer fields: {", ".join(sorted(unknown))}')
  return ml_collections.ConfigDict({**fields, **overrides})


def default_data_dir() -> str:
  """Where tasks look for (and generate) data unless the config says otherwise."""
  return os.environ.get(
      'SHAMPOO_DATA_DIR', os.path.join(os.path.expanduser('~'), '.cache', 'shampoo_bench'))


def get_config(size: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.size = size
  config.seed = 0
  config.data_dir = default_data_dir()

  config.task = ml_collections.ConfigDict()  # filled by the config file: name + task fields
  config.optimizer = ml_collections.ConfigDict()  # filled from optimizer_config()

  # Learning-rate schedule around config.optimizer.learning_rate (the peak).
  config.schedule = ml_collections.ConfigDict(dict(
      warmup_steps=0,        # linear warm-up from 0
      decay='constant',      # constant | linear | cosine | rsqrt | polynomial
      power=2.0,             # polynomial decay exponent (2 = quadratic)
      end_factor=0.0,        # final lr as a fraction of the peak (linear/cosine/polynomial)
  ))

  # Width parameterization (optimizers/parameterization.py): standard, or mup, under which
  # init, per-layer learning rates and the forward pass scale with task width / base_width
  # by each parameter's role and the optimizer's rule, so hyperparameters tuned at
  # base_width transfer to wider models. At width == base_width mup equals standard.
  config.parameterization = 'standard'
  config.base_width = 0  # the width the hyperparameters were tuned at; required by mup

  # Embedding tables (a task's `gather_rows`: DLRM's): `dense` leaves them to config.optimizer;
  # `sgd` / `adagrad` update only the rows a step looks up, at this peak rate on config.schedule's
  # shape, and config.optimizer gets the other parameters (optimizers/embeddings.py).
  config.embedding_updates = ml_collections.ConfigDict(dict(
      rule='dense',
      learning_rate=0.0,
      initial_accumulator_value=0.1,  # adagrad; optax.adagrad's default
      eps=1e-7,                       # adagrad; optax.adagrad's default
  ))

  # Device mesh: axis name -> size, in order; -1 takes all remaining devices.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
  # What `main.py --dry_run` compiles for (trainer/hardware.py lists the choices, docs/scale.md
  # the plans): `cpu` is this machine. Paper: TPU v3-256, the slice of the reference's ResNet-50
  # run (google-research scalable_shampoo README); for the other tasks a choice of this project.
  config.hardware = 'cpu' if size == 'tiny' else 'tpu_v3_256'

  config.global_batch_size = 256
  config.grad_accum_steps = 1   # micro-batches per step; each is global_batch_size / this
  config.eval_batch_size = 256
  config.num_steps = 1000
  config.eval_every = 100       # also evaluates at the last step
  config.log_every = 10
  config.checkpoint_every = 500  # also at the end and on SIGTERM/SIGINT
  config.keep_checkpoints = 2

  # (eval metric, value, 'above' | 'below'); the first eval meeting it is recorded.
  config.target = ('loss', 0.0, 'below')
  config.stop_at_target = False
  config.log_optimizer_metrics = False  # details (e.g. Shampoo root errors) with train metrics; health always

  # Curvature diagnostics on one fixed batch (trainer/diagnostics.py): top Hessian eigenvalue,
  # Hessian trace, R_med overall and per parameter, Shampoo's statistics' conditioning.
  config.diagnostics = ml_collections.ConfigDict(dict(
      every=0,               # steps between diagnostics (also at step 0); 0 = off
      power_iterations=20,   # for the top eigenvalue
      hutchinson_samples=8,  # Rademacher probes for the Hessian diagonal
      seed=0,                # probes and the power iteration's start
  ))
  return config

