"""The project's error for settings a run cannot honour, and the checks every room shares.

It sits at the leaf of the import graph: configs, tasks, optimizers, data, the trainer
and the launchers all raise `ConfigError`, and `main.py` turns it into one line on
stderr and exit code 2.
"""

import argparse
import math
import sys


class ConfigError(ValueError):
  """A setting the run cannot honour; the message names the field."""


def check_fields(hp, fields, owner: str) -> None:
  """ConfigError unless `hp` holds exactly `fields` (the hyperparameters `owner` reads)."""
  unknown, missing = set(hp) - set(fields), set(fields) - set(hp)
  if unknown:
    raise ConfigError(f'unknown {owner} hyperparameters: {", ".join(sorted(unknown))}')
  if missing:
    raise ConfigError(f'missing {owner} hyperparameters: {", ".join(sorted(missing))}')


def check_range(block, field: str, low, high, *, high_inclusive: bool = False, prefix: str = 'optimizer'):
  """Rejects block[field] outside [low, high) (or [low, high]), or not finite, naming `prefix.field`."""
  value = block[field]
  if not math.isfinite(value):
    raise ConfigError(f'{prefix}.{field}={value} must be a finite number')
  too_high = high is not None and (value > high if high_inclusive else value >= high)
  if value < low or too_high:
    upper = 'inf' if high is None else high
    bracket = ']' if high_inclusive else ')'
    raise ConfigError(f'{prefix}.{field}={value} is outside [{low}, {upper}{bracket}')


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the project's command lines: a bad argument is one `error:` line on stderr and
  exit code 2, as every other bad input, rather than a usage dump."""

  def error(self, message: str):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)
