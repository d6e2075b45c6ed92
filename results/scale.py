"""docs/scale.md's tables from planner workdirs (`<root>/<name>/plan.json`, written by `main.py --dry_run`).

The page's prose stays as written: `with_tables` replaces what follows its MARKER line.
"""

import datetime
import importlib.metadata
import json
import os
import platform

GIB = 2 ** 30
MARKER = '<!-- make plans writes everything below this line -->'


def read_plan(workdir: str) -> dict | None:
  """The plan in `workdir`, or None when there is none (or it is unreadable: it is planned again)."""
  try:
    with open(os.path.join(workdir, 'plan.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _gib(n) -> str:
  return '-' if n is None else f'{n / GIB:.2f}'


def _seconds(workdir: str) -> str:
  try:
    with open(os.path.join(workdir, 'plan_seconds.txt')) as f:
      return f'{float(f.read()):.0f}'
  except (OSError, ValueError):
    return '-'


def machine() -> str:
  """This machine in a line, for the header of a measured table."""
  memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB
  versions = []
  for package in ('jax', 'libtpu'):
    try:
      versions.append(f'{package} {importlib.metadata.version(package)}')
    except importlib.metadata.PackageNotFoundError:
      pass
  return f'{platform.machine()}, {os.cpu_count()} CPU cores, {memory:.0f} GiB, {", ".join(versions)}'


def markdown(root: str, names: list[str], command: str) -> str:
  """A summary table over the plans in `root`, then one table per config."""
  lines = [
      '## Paper configs on their hardware',
      '',
      f'Planned {datetime.date.today().isoformat()} on {machine()} by `{command}` (each config:',
      '`python main.py --config=configs/<name>.py:paper --dry_run`). Per device: XLA\'s memory analysis',
      'of the compiled train step (arguments + outputs - donated + temporaries); a plan fits when the',
      'train and eval steps each need at most 90% of a device\'s memory. TPU programs are compiled',
      'for the slice itself (deviceless, by libtpu); `estimated` plans compiled for simulated CPU',
      'devices. Flops per step: XLA\'s count over all devices (a while loop\'s body counted once).',
      'Root refresh: all inverse roots at the Newton iteration cap, an upper bound. Sizes in GiB.',
      '',
      '| config | hardware | mesh | params | optimizer state | state / device | train step / device '
      '| eval step / device | device memory | fits | flops / step | plan s |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  details = []
  for name in names:
    workdir = os.path.join(root, name)
    plan = read_plan(workdir)
    if plan is None:
      lines.append(f'| {name} | no plan (see {workdir}/plan.log) |||||||||||')
      continue
    mesh = ' '.join(f'{axis}={size}' for axis, size in plan['mesh'].items())
    fits = 'yes' if plan['fits'] else '**no**'
    lines.append(
        f'| {name} | {plan["hardware"]}{" (estimated)" if plan["estimated"] else ""} | {mesh} '
        f'| {plan["params"] / 1e6:,.1f}M | {_gib(plan["optimizer_state_bytes"])} '
        f'| {_gib(plan["state_bytes_per_device"])} | {_gib(plan["per_device"]["total_bytes"] or plan["per_device"]["temp_bytes"])} '
        f'| {_gib(plan["eval_per_device"]["total_bytes"] or plan["eval_per_device"]["temp_bytes"])} '
        f'| {_gib(plan["device_memory_bytes"])} | {fits} | {plan["flops_per_step"]:.3g} | {_seconds(workdir)} |')
    shampoo = plan.get('shampoo')
    if shampoo:
      stacks = ', '.join(f'{count} x {shape}' for shape, count in shampoo['stacks'].items())
      details.append(f'| {name} | {shampoo["blocks"]} | {shampoo["padded_blocks"]} | {stacks} '
                     f'| {_gib(shampoo["statistics_bytes"])} | {shampoo["root_flops"]:.3g} '
                     f'| {shampoo["root_flops_per_device"]:.3g} |')
  lines += ['', 'Verdicts:', '']
  for name in names:
    plan = read_plan(os.path.join(root, name))
    if plan is not None:
      lines.append(f'- {name}: {plan["verdict"]}')
  if details:
    lines += ['', '## Shampoo on its hardware', '',
              'Blocks (real, and the padding that makes every stack a multiple of the device count, so',
              'each device holds, updates and roots an equal share), the stacks by block shape and root',
              'exponent with their padded length, bytes of statistics and roots together, and the cost',
              'of one refresh of every root.', '',
              '| config | blocks | padding | stacks | statistics + roots | root refresh flops | per device |',
              '|---|---|---|---|---|---|---|', *details]
  return '\n'.join(lines) + '\n'


def with_tables(page: str, tables: str) -> str:
  """`page` with everything after its MARKER line replaced by `tables` (the marker appended first
  when the page has none)."""
  head = page.split(MARKER)[0].rstrip('\n')
  return f'{head}\n\n{MARKER}\n\n{tables}' if head else f'{MARKER}\n\n{tables}'
