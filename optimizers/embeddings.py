"""Sparse row updates of embedding tables, beside the run's optimizer.

A step looks up a few rows of a table (DLRM: 65536 of up to 40M a table). Differentiated
through the lookup, the table's gradient is a dense table of zeros with those rows added in,
and any optax update then reads and writes every row. With sparse updates the trainer
differentiates with respect to the looked-up rows instead (`Task.gather_rows`) and
`sparse_rows` updates only the rows a step used: their gradients summed per row, then a
row-wise rule, written back with a scatter, as TPU embedding practice does. The run's own
optimizer keeps every other parameter (it never sees the tables: no clipping, weight decay
or preconditioning of them).

Rules (`config.embedding_updates.rule`):
  * `sgd`: row -= lr x gradient; what dense SGD without momentum does.
  * `adagrad`: per coordinate, acc += gradient^2, row -= lr x gradient / sqrt(acc + eps) (0
    where acc is 0), acc starting at `initial_accumulator_value`: optax.adagrad's update,
    which dense Adagrad gives the same rows (an untouched row has a zero gradient).
  * `dense`: no sparse updates; the tables go through the run's optimizer.
The tables' learning rate has the run's schedule (`config.schedule`) around its own peak,
`embedding_updates.learning_rate`.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from errors import ConfigError, check_fields, check_range

RULES = ('dense', 'sgd', 'adagrad')
FIELDS = ('rule', 'learning_rate', 'initial_accumulator_value', 'eps')


class RowUpdate(NamedTuple):
  """The change to a table: `rows` added at `ids` (an id past the table's end is dropped)."""
  ids: jax.Array   # [n] row ids, each at most once
  rows: jax.Array  # [n, *row] the change to each


class SparseRowsState(NamedTuple):
  count: jax.Array  # updates seen: the tables' step in the schedule
  inner: Any        # the run's optimizer's state, over the parameters that are not tables
  accumulators: Any  # per parameter: the table's Adagrad accumulator, else None


def check(cfg: ml_collections.ConfigDict) -> None:
  """Rejects a bad `embedding_updates` block in one line."""
  check_fields(cfg, FIELDS, 'embedding_updates')
  if cfg.rule not in RULES:
    raise ConfigError(f'embedding_updates.rule={cfg.rule!r}: choose one of {", ".join(RULES)}')
  for field in ('learning_rate', 'initial_accumulator_value', 'eps'):
    check_range(cfg, field, 0.0, None)


def is_sparse(cfg: ml_collections.ConfigDict) -> bool:
  return cfg.rule != 'dense'


def _summed_per_row(ids: jax.Array, grads: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """(unique ids padded with num_rows, each one's summed gradient): a row looked up twice gets one update."""
  unique, inverse = jnp.unique(ids, size=ids.shape[0], fill_value=num_rows, return_inverse=True)
  return unique, jnp.zeros_like(grads).at[inverse.reshape(-1)].add(grads)


def sparse_rows(inner: optax.GradientTransformationExtraArgs, tables, cfg: ml_collections.ConfigDict,
                schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
  """`inner` over the parameters that are not tables; a `cfg.rule` row update of each table at
  the learning rate `schedule(step)`.

  `tables`: a tree like the parameters, True at a table. Its gradient, as the trainer passes it,
  is one row per lookup ([n, *row]) and `update` takes `lookups`, the same tree with each table's
  looked-up ids ([n]) at it; the update it returns holds a `RowUpdate` there (apply with
  `apply_updates`).
  """
  check(cfg)
  if not is_sparse(cfg):
    raise ConfigError('sparse_rows needs embedding_updates.rule sgd or adagrad')
  masked = optax.masked(inner, jax.tree.map(lambda table: not table, tables))
  adagrad = optax.scale_by_rss(cfg.initial_accumulator_value, cfg.eps)  # the rows' rule: optax's own

  def init_fn(params):
    accumulators = jax.tree.map(
        lambda p, table: (jnp.full(p.shape, cfg.initial_accumulator_value, jnp.float32)
                          if table and cfg.rule == 'adagrad' else None), params, tables)
    return SparseRowsState(jnp.zeros((), jnp.int32), masked.init(params), accumulators)

  def update_fn(updates, state, params=None, *, lookups, **extra_args):
    dense, inner_state = masked.update(updates, state.inner, params, **extra_args)
    rate = schedule(state.count)

    def row_update(update, param, table, ids, accumulator):
      if not table:
        return update, accumulator
      unique, grads = _summed_per_row(ids.reshape(-1), update.reshape((-1,) + param.shape[1:]).astype(jnp.float32),
                                      param.shape[0])
      if cfg.rule == 'sgd':
        return RowUpdate(unique, (-rate * grads).astype(param.dtype)), accumulator
      seen = optax.ScaleByRssState(accumulator.at[unique].get(mode='fill', fill_value=0.0))
      scaled, rows = adagrad.update(grads, seen)
      return (RowUpdate(unique, (-rate * scaled).astype(param.dtype)),
              accumulator.at[unique].set(rows.sum_of_squares, mode='drop'))

    treedef = jax.tree.structure(params)
    pairs = [row_update(*leaves) for leaves in zip(
        treedef.flatten_up_to(dense), treedef.flatten_up_to(params), treedef.flatten_up_to(tables),
        treedef.flatten_up_to(lookups), treedef.flatten_up_to(state.accumulators))]
    new_updates = treedef.unflatten([u for u, _ in pairs])
    accumulators = treedef.unflatten([a for _, a in pairs])
    return new_updates, SparseRowsState(state.count + 1, inner_state, accumulators)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def apply_updates(params, updates):
  """optax.apply_updates, with a `RowUpdate` scattered into its table's rows."""
  is_row_update = lambda x: isinstance(x, RowUpdate)
  return jax.tree.map(
      lambda update, param: (param.at[update.ids].add(update.rows, mode='drop') if is_row_update(update)
                             else (param + update).astype(param.dtype)),
      updates, params, is_leaf=is_row_update)
