"""The trainer: mesh, sharded jitted steps, evaluation, targets, timing, checkpoints; the planner.

Submodules load on first use, so that `trainer.hardware` (no JAX) can set the platform
before anything imports JAX.
"""

import importlib


def __getattr__(name: str):
  if name == 'run':
    return importlib.import_module('trainer.loop').run
  return importlib.import_module(f'trainer.{name}')
