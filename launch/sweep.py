"""Runs a sweep: every trial of a search space as its own `main.py` run.

    python -m launch.sweep --config=configs/transformer_shampoo.py:tiny \\
        --sweep=launch/sweeps/lr.py --backend=local [--parallel=2] [--dry_run] [--set KEY=VALUE ...]

A sweep file (next to the configs, in launch/sweeps/) defines
`get_sweep(config) -> dict(space=..., trials=..., seeds=..., fixed=..., sample_seed=...)`
over the base config, and may name that config as `CONFIG = 'configs/X.py:tiny'`
(`--config` overrides it). Each trial (a point of the space, with one seed) gets
a workdir `<sweep_dir>/<trial id>` named by its values, and `sweep.json` in the
sweep dir indexes them. A trial whose workdir holds a finished run (completed,
reached_target, diverged) is skipped, so a re-run resumes the sweep: an
interrupted trial resumes from its checkpoint, a finished one is never repeated, a
failed one (its command exited with a code its run does not explain) runs again. A
trial whose run holds its workdir's lock (started by another launcher) is reported as
running and not started twice.
`--set optimizer.norm_constraint=0` runs the same sweep with a setting changed in the base
config and every trial (a value the sweep varies is the trial's; a grid the sweep file
derives from it moves with it, and trials the moved grid shares are not rerun). Give it
its own --sweep_dir: sweep.json records it under `set`, and results views label the
sweep's runs by it.
"""

import ast
import copy
import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
from typing import Any

from errors import ArgumentParser
from launch import backends, space as spaces, trial_status

INDEX_FILE = 'sweep.json'
SWEEP_KEYS = ('space', 'trials', 'seeds', 'fixed', 'sample_seed')
MAX_ID_LENGTH = 100


class SweepError(ValueError):
  """A sweep that cannot run as given; reported as one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Trial:
  id: str
  overrides: dict[str, Any]
  workdir: str

  def main_args(self, config_spec: str) -> list[str]:
    return [f'--config={config_spec}', f'--workdir={self.workdir}',
            *(f'--config.{key}={format_value(value)}' for key, value in self.overrides.items())]


def format_value(value) -> str:
  """A value as main.py's `--config.key=value` parses it back."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def _load_module(path: str, what: str):
  if not os.path.isfile(path):
    raise SweepError(f'{what} {path} does not exist')
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 -- whatever the file raised, in one line
    raise SweepError(f'{path}: {type(e).__name__}: {e}') from None
  return module


def _from_root(config_spec: str) -> str:
  """The config path relative to the repository (as every host's checkout has it), if inside it."""
  path, sep, size = config_spec.partition(':')
  relative = os.path.relpath(os.path.abspath(path), backends.ROOT)
  return (path if relative.startswith('..') else relative) + sep + size


def load_config(spec: str):
  """(config, name, size) of `configs/X.py[:size]` (relative to the repository), locked as main.py does."""
  path, _, size = spec.partition(':')
  module = _load_module(os.path.join(backends.ROOT, path), 'config file')
  try:
    config = module.get_config(size) if size else module.get_config()
  except Exception as e:  # noqa: BLE001
    raise SweepError(f'{spec}: {e}') from None
  config.lock()
  return config, os.path.splitext(os.path.basename(path))[0], config.size


def _trial_id(point: dict[str, Any], seed: int) -> str:
  """'learning_rate=0.003,seed=0': the varied values, by their last key component if unambiguous."""
  short = {key: key.rsplit('.', 1)[-1] for key in point}
  if len(set(short.values())) < len(short):
    short = {key: key for key in point}
  parts = [f'{short[key]}={format_value(value)}' for key, value in point.items()] + [f'seed={seed}']
  name = ','.join(parts).replace('/', '_').replace(' ', '').replace("'", '')
  if len(name) > MAX_ID_LENGTH:
    name = f'{name[:MAX_ID_LENGTH - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}'
  return name


def parse_settings(items: list[str] | None) -> dict[str, Any]:
  """`KEY=VALUE` strings as overrides: VALUE a Python literal (0, 1e-3, 'x', (1, 2)) or else a string."""
  settings = {}
  for item in items or []:
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise SweepError(f'--set {item}: expected KEY=VALUE, e.g. optimizer.norm_constraint=0')
    try:
      settings[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      settings[key] = text
  return settings


def _settings_text(settings: dict[str, Any]) -> str:
  return ' '.join(f'{key}={format_value(value)}' for key, value in settings.items()) or '(none)'


def _check(config, overrides: dict[str, Any]) -> None:
  """Each override names a field of the config and has its type, as main.py would require."""
  for key, value in overrides.items():
    try:
      copy.deepcopy(config).update_from_flattened_dict({key: value})
    except (KeyError, AttributeError):
      raise SweepError(f'unknown config key {key} in the sweep: the config has no such field') from None
    except TypeError as e:
      raise SweepError(f'{key}={value!r}: {e}') from None


def trials(config, sweep: dict, sweep_dir: str, settings: dict[str, Any] | None = None) -> list[Trial]:
  """The sweep's trials, with `settings` (--set) over its fixed values (a value it varies is the
  trial's); each one's overrides are checked against the config (keys and types)."""
  unknown = set(sweep) - set(SWEEP_KEYS)
  if unknown:
    raise SweepError(f'get_sweep() returned unknown keys {sorted(unknown)}; expected {", ".join(SWEEP_KEYS)}')
  space = sweep.get('space') or {}
  if 'seed' in space:
    raise SweepError("'seed' belongs in seeds=[...], not in the space")
  seeds = list(sweep.get('seeds') or [config.seed])
  fixed = {**(sweep.get('fixed') or {}), **{k: v for k, v in (settings or {}).items() if k not in space}}
  try:
    points = spaces.points(space, sweep.get('trials'), sweep.get('sample_seed', 0))
  except ValueError as e:
    raise SweepError(str(e)) from None
  result, seen = [], set()
  for point in points:
    for seed in seeds:
      overrides = {**fixed, **point, 'seed': seed}
      _check(config, overrides)
      trial_id = _trial_id(point, seed)
      if trial_id not in seen:  # random draws may repeat a point
        seen.add(trial_id)
        result.append(Trial(trial_id, overrides, os.path.join(sweep_dir, trial_id)))
  return result


class Index:
  """sweep.json: the sweep's settings and one entry per trial, rewritten atomically on each change.

  Entries of trials a changed sweep file no longer produces are kept: their runs are still there.
  """

  def __init__(self, sweep_dir: str, header: dict, trial_list: list[Trial]):
    self.path = os.path.join(sweep_dir, INDEX_FILE)
    self.header = header
    self.entries: dict[str, dict] = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        old = json.load(f)
      if old.get('config') != header['config']:
        raise SweepError(f'{sweep_dir} holds a sweep of {old.get("config")}, not {header["config"]}; '
                         f'use another --sweep_dir')
      if old.get('set', {}) != json.loads(json.dumps(header['set'])):  # as JSON stores it: a tuple is a list
        raise SweepError(f'{sweep_dir} holds the sweep with --set {_settings_text(old.get("set", {}))}, '
                         f'not {_settings_text(header["set"])}; use another --sweep_dir')
      self.entries = {entry['id']: entry for entry in old.get('trials', [])}
    for trial in trial_list:
      self.entries[trial.id] = {'id': trial.id, 'workdir': os.path.basename(trial.workdir),
                                'overrides': trial.overrides}
      self._record(trial, trial_status.status(trial.workdir))

  def _record(self, trial: Trial, status: str) -> None:
    entry = self.entries[trial.id]
    entry['status'] = status
    summary = trial_status.summary(trial.workdir)
    entry.update({key: summary[key] for key in (
        'step', 'steps_to_target', 'train_seconds_to_target', 'final_eval') if key in summary})
    for key in ('exit_code', 'log'):  # a failed attempt's, gone once the trial starts again
      entry.pop(key, None)
    entry.update(trial_status.failure(trial.workdir))

  def update(self, trial: Trial, status: str) -> None:
    self._record(trial, status)
    self.write()

  def write(self) -> None:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    with open(self.path + '.tmp', 'w') as f:
      json.dump({**self.header, 'trials': list(self.entries.values())}, f, indent=2)
      f.write('\n')
    os.replace(self.path + '.tmp', self.path)


def _parse(argv):
  parser = ArgumentParser(prog='python -m launch.sweep', description=__doc__.split('\n\n')[0])
  parser.add_argument('--sweep', required=True, help='sweep file, e.g. launch/sweeps/lr.py')
  parser.add_argument('--config', help="base config with its size (default: the sweep file's CONFIG)")
  parser.add_argument('--backend', default='local', choices=backends.NAMES)
  parser.add_argument('--sweep_dir', help='default: runs/sweeps/<sweep>-<config>-<size>')
  parser.add_argument('--dry_run', action='store_true', help='print what would run, run nothing')
  parser.add_argument('--set', action='append', metavar='KEY=VALUE', dest='settings',
                      help='a config setting for every trial, over the sweep\'s fixed ones (repeatable)')
  parser.add_argument('--parallel', type=int, default=1, help='local: trials at once, devices split among them')
  parser.add_argument('--tpu', help='tpu: the TPU VM (pod slice) name')
  parser.add_argument('--zone', help='tpu: its zone')
  parser.add_argument('--project', help='tpu: its project (default: gcloud config)')
  parser.add_argument('--remote_dir', default='~/shampoo-bench', help='tpu: the checkout on every worker')
  parser.add_argument('--python', default='.venv/bin/python',
                      help="tpu / slurm: the interpreter on the hosts, from the checkout (default: its .venv's)")
  parser.add_argument('--no_setup', action='store_true',
                      help='tpu: do not copy this checkout to the workers and `make install ACCEL=tpu` there first')
  parser.add_argument('--venv_python', default='python3', help="tpu setup: the Python (>= 3.11) the workers' .venv uses")
  parser.add_argument('--nodes', type=int, default=1, help='slurm: nodes per trial')
  parser.add_argument('--gpus_per_node', type=int, default=8, help='slurm: one process per GPU')
  parser.add_argument('--time', default='24:00:00', help='slurm: time limit per trial')
  parser.add_argument('--partition', help='slurm: partition')
  parser.add_argument('--account', help='slurm: account')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = _parse(argv)
  try:
    module = _load_module(args.sweep, 'sweep file')
    if not hasattr(module, 'get_sweep'):
      raise SweepError(f'{args.sweep} defines no get_sweep(config)')
    config_spec = args.config or getattr(module, 'CONFIG', None)
    if not config_spec:
      raise SweepError(f'give --config: {args.sweep} names no CONFIG')
    config_spec = _from_root(config_spec)
    config, name, size = load_config(config_spec)
    settings = parse_settings(args.settings)
    _check(config, settings)
    config.update_from_flattened_dict(settings)  # the sweep file reads the base config as --set leaves it
    sweep_name = os.path.splitext(os.path.basename(args.sweep))[0]
    sweep_dir = os.path.abspath(args.sweep_dir or os.path.join('runs', 'sweeps', f'{sweep_name}-{name}-{size}'))
    try:
      sweep = module.get_sweep(copy.deepcopy(config))
    except Exception as e:  # noqa: BLE001 -- whatever the sweep file raised, in one line
      raise SweepError(f'{args.sweep}: {type(e).__name__}: {e}') from None
    if not isinstance(sweep, dict):
      raise SweepError(f'{args.sweep}: get_sweep() must return a dict with {", ".join(SWEEP_KEYS)}')
    trial_list = trials(config, sweep, sweep_dir, settings)
    shared = {key: value for key, value in settings.items() if key not in (sweep.get('space') or {})}
    header = {'sweep': args.sweep, 'config': config_spec, 'name': name, 'size': size,
              'fixed': {**(sweep.get('fixed') or {}), **shared}, 'set': shared}
    index = Index(sweep_dir, header, trial_list)
    backend = backends.create(args, config_spec, sweep_dir)
  except (SweepError, backends.BackendError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  unfinished = [t for t in trial_list if index.entries[t.id]['status'] not in trial_status.FINISHED]
  pending = []
  for trial in unfinished:
    holder = trial_status.lock_holder(trial.workdir)
    if holder is None:
      pending.append(trial)
    else:  # started by another launcher: one run per workdir
      index.entries[trial.id]['status'] = 'running'
      print(f'{trial.id} is running (pid {holder[0]} on host {holder[1]}); not starting it', flush=True)
  running = f'{len(unfinished) - len(pending)} running elsewhere, ' if len(pending) < len(unfinished) else ''
  print(f'sweep {sweep_dir}: {len(trial_list)} trials, {len(trial_list) - len(unfinished)} already finished, '
        f'{running}{len(pending)} to run ({args.backend})', flush=True)
  if not args.dry_run:
    index.write()
  return backend.run(pending, index)


if __name__ == '__main__':
  sys.exit(main())
