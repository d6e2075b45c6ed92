"""The trainer: mesh, sharded jitted steps, evaluation, targets, timing, checkpoints."""

from trainer import distributed, host_memory  # noqa: F401
from trainer.loop import run  # noqa: F401
