"""Search-space dimensions for sweep files, and the trial points they expand to.

A space maps dotted config keys to dimensions. When every dimension is a grid
the trials are the grid's points (the product, in order); when any is a
distribution, `trials` points are drawn with a fixed seed, so re-reading the
sweep file gives the same trials and a re-run finds the ones already done.
"""

import dataclasses
import itertools
import math
from typing import Any, Mapping

import numpy as np

SIGNIFICANT_DIGITS = 3  # sampled values are rounded, so a trial's name states its value exactly


def _round(value: float) -> float:
  return float(f'{value:.{SIGNIFICANT_DIGITS}g}')


@dataclasses.dataclass(frozen=True)
class Grid:
  values: tuple

  def sample(self, rng: np.random.Generator):
    return self.values[rng.integers(len(self.values))]


@dataclasses.dataclass(frozen=True)
class Uniform:
  low: float
  high: float

  def sample(self, rng: np.random.Generator) -> float:
    return _round(rng.uniform(self.low, self.high))


@dataclasses.dataclass(frozen=True)
class LogUniform:
  low: float
  high: float

  def sample(self, rng: np.random.Generator) -> float:
    return _round(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


Dimension = Grid | Uniform | LogUniform


def grid(*values) -> Grid:
  if not values:
    raise ValueError('grid() needs at least one value')
  return Grid(tuple(values))


def log_grid(low: float, high: float, num: int) -> Grid:
  """`num` log-spaced values from low to high (both included), e.g. learning rates."""
  if not 0 < low < high or num < 2:
    raise ValueError(f'log_grid({low}, {high}, {num}): need 0 < low < high and num >= 2')
  return Grid(tuple(_round(v) for v in np.geomspace(low, high, num)))


def uniform(low: float, high: float) -> Uniform:
  if not low < high:
    raise ValueError(f'uniform({low}, {high}): need low < high')
  return Uniform(float(low), float(high))


def log_uniform(low: float, high: float) -> LogUniform:
  if not 0 < low < high:
    raise ValueError(f'log_uniform({low}, {high}): need 0 < low < high')
  return LogUniform(float(low), float(high))


def points(space: Mapping[str, Dimension], trials: int | None, seed: int = 0) -> list[dict[str, Any]]:
  """The hyperparameter points of a sweep (seeds are added by the caller)."""
  if not space:
    raise ValueError('the search space is empty: name at least one config key to vary')
  for key, dimension in space.items():
    if not isinstance(dimension, (Grid, Uniform, LogUniform)):
      raise ValueError(f'space[{key!r}] = {dimension!r}: use launch.space.grid / log_grid / uniform / '
                       f'log_uniform')
  if trials is not None and trials < 1:
    raise ValueError(f'trials={trials}: the budget must be at least one trial')
  keys = list(space)
  if all(isinstance(d, Grid) for d in space.values()):
    product = [dict(zip(keys, values)) for values in itertools.product(*(space[k].values for k in keys))]
    if trials is not None and len(product) > trials:
      raise ValueError(f'the grid has {len(product)} points, over the budget of trials={trials}')
    return product
  if trials is None:
    raise ValueError('a space with random dimensions needs a trial budget (trials=N)')
  rng = np.random.default_rng(seed)
  return [{key: space[key].sample(rng) for key in keys} for _ in range(trials)]
