"""The hardware a config can be planned for (`config.hardware`, `main.py --dry_run`).

No JAX here: main.py reads this table to set the environment (simulated devices, libtpu's
settings) before JAX is imported.

TPU slices are named as Cloud TPU names them: the number counts TensorCores for v3 and v4
(a v4 chip's two cores are one device, "megacore"), chips for v5e. Their programs compile on
any machine with libtpu installed (deviceless ahead-of-time compilation). The usable memory
per device is what XLA reports when a program does not fit. GPU clusters compile for
simulated CPU devices: their plan is an estimate.
"""

import dataclasses
import glob
import os

from errors import ConfigError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Hardware:
  name: str
  platform: str             # 'tpu', 'gpu' or 'cpu' (this machine's CPU devices)
  devices: int              # JAX devices: TPU cores (v3), chips (v4 megacore, v5e), GPUs
  device_memory_bytes: int  # usable per device
  topology: str = ''        # jax.experimental.topologies name (TPU)
  chip_config: str = 'default'
  gpus_per_host: int = 8


def _tpu(generation: str, size: int, topology: str, memory_gib: float, chip_config: str = 'default'):
  devices = 1
  for side in topology.split(':')[1].split('x'):
    devices *= int(side)
  devices *= 2 if generation == 'v3' else 1  # v3: two cores per chip, each its own device
  return Hardware(f'tpu_{generation}_{size}', 'tpu', devices, int(memory_gib * GIB), topology, chip_config)


HARDWARE = {h.name: h for h in (
    *(_tpu('v3', size, f'v3:{topology}', 15.48) for size, topology in (
        (8, '2x2'), (32, '4x4'), (128, '8x8'), (256, '8x16'), (512, '16x16'), (1024, '16x32'),
        (2048, '32x32'))),
    *(_tpu('v4', size, f'v4:{topology}', 30.75, 'megacore') for size, topology in (
        (8, '2x2x1'), (32, '2x2x4'), (128, '4x4x4'), (256, '4x4x8'), (512, '4x8x8'), (1024, '8x8x8'),
        (2048, '8x8x16'), (4096, '8x16x16'))),
    *(_tpu('v5e', size, f'v5e:{topology}', 15.75) for size, topology in (
        (8, '2x4'), (64, '8x8'), (256, '16x16'))),
    Hardware('gpu_a100_8', 'gpu', 8, int(79.15 * GIB)),
    Hardware('gpu_h100_8', 'gpu', 8, int(79.15 * GIB)),
    Hardware('gpu_h100_64', 'gpu', 64, int(79.15 * GIB)),
    Hardware('gpu_h100_256', 'gpu', 256, int(79.15 * GIB)),
    Hardware('cpu', 'cpu', 0, 0),  # this machine: its CPU devices share its memory
)}


def get(name: str) -> Hardware:
  if name not in HARDWARE:
    raise ConfigError(f'unknown hardware {name!r}: choose one of {", ".join(HARDWARE)}')
  return HARDWARE[name]


def on_tpu_host() -> bool:
  """Whether this machine has TPU chips attached (Cloud TPU VMs expose /dev/accel* or /dev/vfio)."""
  return bool(glob.glob('/dev/accel*')) or os.path.isdir('/dev/vfio')


def on_gpu_host() -> bool:
  return bool(glob.glob('/dev/nvidia[0-9]*'))


def set_platform_environment(plan_for: Hardware | None) -> None:
  """Before JAX is imported: the platform to run on, explicitly.

  A machine without accelerators runs on its CPU, even with libtpu installed for planning
  (which would otherwise probe for TPU chips at start-up and log its failure). Planning
  compiles on the CPU: a GPU cluster as that many simulated CPU devices, a TPU slice
  for libtpu's compile-only devices (several planners may load libtpu at once).
  """
  if plan_for is None:
    if not on_tpu_host() and not on_gpu_host():
      os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    return
  os.environ['JAX_PLATFORMS'] = 'cpu'
  if plan_for.platform == 'gpu':
    flags = [f for f in os.environ.get('XLA_FLAGS', '').split() if 'host_platform_device_count' not in f]
    os.environ['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={plan_for.devices}'])
  if plan_for.platform == 'tpu':
    os.environ['ALLOW_MULTIPLE_LIBTPU_LOAD'] = '1'
    os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
    os.environ.setdefault('TPU_ACCELERATOR_TYPE', plan_for.name.removeprefix('tpu_').replace('_', '-'))
