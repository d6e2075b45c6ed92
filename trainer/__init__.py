"""The trainer: mesh, sharded jitted steps, evaluation, targets, timing, checkpoints."""

from trainer import distributed  # noqa: F401
from trainer.loop import run  # noqa: F401
