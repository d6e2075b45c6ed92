"""Plans a config for its hardware before any is rented: `main.py --dry_run`.

No data, no accelerator, no parameter allocated: the trainer's own set-up runs on abstract
shapes (`jax.eval_shape`), then the real train and eval steps are lowered with the run's
shardings and compiled ahead of time for `config.hardware` (TPU slices by libtpu's
compile-only devices, GPU clusters as simulated CPU devices: an estimate). XLA's memory and
cost analyses of those programs make the plan, written to `<workdir>/plan.json`.
"""

import math
import os
import re
import sys

import jax
import numpy as np

import optimizers
from errors import ConfigError
from trainer import hardware as hardware_lib, loop, workdir as workdirs

PLAN_FILE = 'plan.json'
USABLE_SHARE = 0.9  # a plan fits when a step needs at most this share of a device's memory
_NOT_FITTING = re.compile(r'RESOURCE_EXHAUSTED.*?\(([\d.]+)([KMGT]?)\) exceeds available \w+ \(([\d.]+)([KMGT]?)\)',
                          re.DOTALL)
_UNITS = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}


def target_devices(hw: hardware_lib.Hardware) -> list:
  """The devices to compile for: libtpu's compile-only devices of a TPU slice, or CPU devices."""
  if hw.platform == 'tpu':
    try:
      from jax.experimental import topologies
      return list(topologies.get_topology_desc(topology_name=hw.topology, platform='tpu',
                                               chip_config_name=hw.chip_config).devices)
    except Exception as e:  # noqa: BLE001 -- libtpu missing or unloadable: one line, how to get it
      raise ConfigError(f'planning for {hw.name} needs libtpu: `make plans` installs it, or '
                        f'pip install "jax[tpu]=={jax.__version__}" ({type(e).__name__})') from None
  devices = jax.devices('cpu')
  if hw.platform == 'gpu':
    if len(devices) < hw.devices:
      raise ConfigError(f'planning for {hw.name} needs {hw.devices} simulated CPU devices, JAX has '
                        f'{len(devices)}: plan through main.py --dry_run, which sets them up')
    return devices[:hw.devices]
  return devices


def _device_memory(hw: hardware_lib.Hardware, devices) -> int:
  if hw.platform == 'cpu':  # the machine's memory, shared by its (simulated) devices
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // len(devices)
  return hw.device_memory_bytes


def _nbytes(tree) -> int:
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _nbytes_per_device(tree, shardings) -> int:
  return sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _compile(fn, in_shardings, out_shardings, args, donate: bool) -> dict:
  """Per-device memory (bytes) and flops of `fn` compiled for the target, or why it does not fit."""
  jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                   donate_argnums=0 if donate else ())
  try:
    compiled = jitted.lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    found = _NOT_FITTING.search(str(e))
    if not found:
      raise
    needed, available = (float(found[i]) * _UNITS[found[i + 1]] for i in (1, 3))
    return {'compiled': False, 'temp_bytes': int(needed), 'available_bytes': int(available),
            'error': str(e).strip().splitlines()[0][:300]}
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  argument, output, alias, temp = (int(getattr(memory, f'{field}_size_in_bytes'))
                                   for field in ('argument', 'output', 'alias', 'temp'))
  return {'compiled': True, 'argument_bytes': argument, 'output_bytes': output, 'alias_bytes': alias,
          'temp_bytes': temp, 'total_bytes': argument + output - alias + temp,
          'flops': float((cost or {}).get('flops', 0.0))}


def _root_flops(size: int, exponent: int, hp) -> float:
  """Flops of one inverse root of a size x size statistic at the iteration cap (an upper bound).

  A coupled Newton step multiplies b x b matrices for the p-th power (by squaring) and twice
  more (M and H); eigh is about 9 b^3 (a symmetric eigendecomposition with vectors) and 2 b^3
  to rebuild the root. The 50 power iterations for the largest eigenvalue are 2 b^2 each.
  warm_eigh at its worst projects onto the kept basis (two products), recomputes it (eigh),
  projects again and rebuilds the root (two products each); a refresh that keeps its basis costs 8 b^3.
  """
  power = exponent.bit_length() - 1 + bin(exponent).count('1') - 1
  if hp.root_method == 'eigh':
    return 11.0 * size ** 3 + 100.0 * size ** 2
  if hp.root_method == 'warm_eigh':
    return 21.0 * size ** 3
  return hp.newton_iterations * (power + 2) * 2.0 * size ** 3 + 100.0 * size ** 2


def _shampoo(state, optimized_params, config, mesh_size: int) -> dict | None:
  """Shampoo's blocks, padded stacks, statistics bytes and root cost, from its abstract state and the
  parameters it updates (sparse tables are not among them)."""
  if config.optimizer.name != 'shampoo':
    return None
  hp = {k: config.optimizer[k] for k in optimizers.shampoo.FIELDS}
  blocking = optimizers.shampoo.blocking
  layout = blocking.plan([p.shape for p in jax.tree.leaves(optimized_params)], hp, mesh_size)
  root_flops = sum(size.padded * _root_flops(blocking.bucket_size(key), blocking.bucket_exponent(key), config.optimizer)
                   for key, size in layout.sizes.items())
  shampoo_states = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optimizers.shampoo.ShampooState))
                    if isinstance(s, optimizers.shampoo.ShampooState)]
  real = sum(size.real for size in layout.groups.values())
  return {'blocks': real, 'padded_blocks': sum(size.padded for size in layout.groups.values()) - real,
          'stacks': {group: size.padded for group, size in layout.groups.items()},
          'statistics_bytes': sum(_nbytes([s.stats, s.roots]) for s in shampoo_states),
          'root_flops': root_flops, 'root_flops_per_device': root_flops / mesh_size}


def make_plan(config, name: str) -> dict:
  """The plan of `config` on `config.hardware`: its shapes, state, per-device memory and flops."""
  hw = hardware_lib.get(config.hardware)
  devices = target_devices(hw)
  setup = loop.set_up(config, devices, name, with_data=False)
  shardings, state = setup.shardings, setup.abstract_state
  task = setup.task
  batch_sharding = shardings.batch
  train_batch, eval_batch = (
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding), task.abstract_batch(split))
      for split in ('train', 'eval'))
  abstract_state = _abstract(state, shardings.state)
  train = _compile(setup.train_step, (shardings.state, batch_sharding), (shardings.state, shardings.replicated),
                   (abstract_state, train_batch), donate=True)
  evaluate = _compile(task.evaluate, (shardings.params, shardings.model_state, batch_sharding),
                      shardings.replicated, (abstract_state.params, abstract_state.model_state, eval_batch),
                      donate=False)
  memory = _device_memory(hw, devices)
  needed = max(step['total_bytes'] if step['compiled'] else step['temp_bytes'] for step in (train, evaluate))
  fits = train['compiled'] and evaluate['compiled'] and needed <= USABLE_SHARE * memory
  mesh = dict(setup.mesh.shape)
  return {
      'config': f'{name}:{config.size}', 'hardware': hw.name, 'platform': hw.platform,
      'devices': len(devices), 'hosts': len({d.process_index for d in devices}), 'mesh': mesh,
      'params': setup.summary['param_count'], 'param_bytes': _nbytes(state.params),
      'optimizer_state_bytes': _nbytes(state.opt_state),
      'state_bytes_per_device': _nbytes_per_device(state, shardings.state),
      'per_device': {k: train.get(k) for k in ('argument_bytes', 'output_bytes', 'alias_bytes',
                                                 'temp_bytes', 'total_bytes')},
      'eval_per_device': {k: evaluate.get(k) for k in ('temp_bytes', 'total_bytes')},
      'device_memory_bytes': memory, 'fits': bool(fits),
      'flops_per_step': train.get('flops', 0.0) * len(devices),
      'flops_per_device': train.get('flops'),
      'estimated': hw.platform == 'gpu',
      'shampoo': _shampoo(state, setup.optimized_params, config, setup.mesh.size),
      'remat': config.task.get('remat'),
      'errors': [step['error'] for step in (train, evaluate) if not step['compiled']],
      'verdict': _verdict(hw, needed, memory, fits, train, evaluate),
  }


def _gib(n) -> str:
  return '-' if n is None else f'{n / 2 ** 30:.2f} GiB'


def _verdict(hw, needed: int, memory: int, fits: bool, train: dict, evaluate: dict) -> str:
  if fits:
    return (f'fits {hw.name}: {_gib(needed)} of {_gib(memory)} per device '
            f'({100 * (1 - needed / memory):.0f}% headroom)')
  if not (train['compiled'] and evaluate['compiled']):
    step = 'train' if not train['compiled'] else 'eval'
    return (f'does not fit {hw.name}: the {step} step needs {_gib(needed)} of temporaries per device, '
            f'more than the {_gib(memory)} available')
  return (f'does not fit {hw.name}: {_gib(needed)} per device, over {100 * USABLE_SHARE:.0f}% of '
          f'{_gib(memory)}')


def describe(plan: dict) -> str:
  """The plan as a readable table ending in its one-line verdict."""
  d, e = plan['per_device'], plan['eval_per_device']
  mesh = ' '.join(f'{axis}={size}' for axis, size in plan['mesh'].items())
  rows = [
      ('config', plan['config']),
      ('hardware', f'{plan["hardware"]}: {plan["devices"]} devices on {plan["hosts"]} hosts, mesh {mesh}'
                   + (' (estimated on simulated devices)' if plan['estimated'] else '')),
      ('parameters', f'{plan["params"] / 1e6:,.1f}M ({_gib(plan["param_bytes"])})'),
      ('optimizer state', _gib(plan['optimizer_state_bytes'])),
      ('state per device', _gib(plan['state_bytes_per_device'])),
      ('train step per device', f'arguments {_gib(d["argument_bytes"])}, outputs {_gib(d["output_bytes"])}, '
                                f'temporaries {_gib(d["temp_bytes"])}, total {_gib(d["total_bytes"])}'),
      ('eval step per device', f'temporaries {_gib(e["temp_bytes"])}, total {_gib(e["total_bytes"])}'),
      ('device memory', _gib(plan['device_memory_bytes'])),
      ('flops per step', f'{plan["flops_per_step"]:.3g}'),
  ]
  if plan['shampoo']:
    s = plan['shampoo']
    stacks = ', '.join(f'{count} of {shape}' for shape, count in s['stacks'].items())
    rows += [('shampoo blocks', f'{s["blocks"]} (+{s["padded_blocks"]} padding): {stacks}'),
             ('shampoo statistics', f'{_gib(s["statistics_bytes"])} (statistics and roots)'),
             ('root refresh', f'{s["root_flops"]:.3g} flops at the iteration cap, '
                              f'{s["root_flops_per_device"]:.3g} per device')]
  width = max(len(label) for label, _ in rows)
  lines = [f'{label:<{width}}  {value}' for label, value in rows]
  return '\n'.join(lines + plan['errors'] + [plan['verdict']])


def run(config, workdir: str, name: str) -> dict:
  """Plans `config`, prints the plan and writes `<workdir>/plan.json`; nothing else is written."""
  plan = make_plan(config, name)
  os.makedirs(workdir, exist_ok=True)
  workdirs.write_json(os.path.join(workdir, PLAN_FILE), plan)
  print(describe(plan), file=sys.stdout, flush=True)
  return plan

