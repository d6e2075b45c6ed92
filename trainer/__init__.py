"""The trainer: mesh, sharded jitted steps, evaluation, targets, timing, checkpoints."""

from trainer.loop import run  # noqa: F401
