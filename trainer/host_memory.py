"""Keep freed host memory in the process, so that a CPU step does not page-fault its temporaries.

XLA's CPU runtime allocates each execution's temporary buffer with malloc and frees it after.
glibc serves a block above its mmap threshold (at most 32 MiB when it adapts it) with a fresh
mmap, whose pages fault in on first touch, every step. Measured on 2 cores: the 34.5 MB
temporaries of bench/shampoo_overhead.py's Shampoo step took 950 page faults and 6.6 ms a step,
17 and 5.7 ms with this policy; the tiny BERT step took 39 ms, 18 with it, and the tiny
ResNet-50's 195 ms, 151 with it (bench/step_time.py).
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEEP = 1 << 30  # blocks below 1 GiB come from the heap, and up to 1 GiB of free heap is kept


def keep_freed_memory() -> bool:
  """Whether glibc now serves blocks below 1 GiB from its heap and keeps up to 1 GiB free.

  Leaves the allocator alone where it is not glibc's, or where MALLOC_MMAP_THRESHOLD_ or
  MALLOC_TRIM_THRESHOLD_ say the user has chosen a policy.
  """
  if not sys.platform.startswith('linux') or any(
      name in os.environ for name in ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')):
    return False
  try:
    mallopt = ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):  # not glibc (musl has no mallopt)
    return False
  return bool(mallopt(M_MMAP_THRESHOLD, KEEP)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP))
