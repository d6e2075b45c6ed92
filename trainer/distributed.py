"""Joining a multi-process job: one process per host (TPU VM, GPU node) or per GPU."""

import json

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """jax.distributed.initialize, before any computation.

  With no arguments JAX detects the job on Cloud TPU and under Slurm (one task per
  process); elsewhere process 0's host:port, the process count and this process's
  id are given. CPU processes exchange collectives over gloo, which is how the
  multi-process tests run on one machine (two processes on 127.0.0.1).
  """
  try:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except AttributeError:  # a JAX where gloo is the only (default) CPU implementation
    pass
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def every_process(value) -> list:
  """Every process's JSON `value`, in process order, on every process (a collective)."""
  if jax.process_count() == 1:
    return [value]
  encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
  size = int(np.max(multihost_utils.process_allgather(np.array([len(encoded)]))))
  padded = np.zeros(size, np.uint8)
  padded[:len(encoded)] = encoded
  gathered = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row).rstrip(b'\0')) for row in gathered]
