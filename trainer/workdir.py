"""The run directory: checked before anything is written, JSON files written atomically."""

import json
import os

import ml_collections

from errors import ConfigError

CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
# Settings that do not change the training trajectory: a resumed run may change them.
RUN_CONTROL_KEYS = ('num_steps', 'eval_every', 'log_every', 'checkpoint_every', 'keep_checkpoints',
                    'stop_at_target', 'target', 'eval_batch_size', 'data_dir', 'diagnostics')


def write_json(path: str, value) -> None:
  """Writes via a temporary file and a rename, so a reader never sees half a file."""
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=2, default=str)
    f.write('\n')
  os.replace(path + '.tmp', path)


def flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return flat


def prepare(workdir: str, config: ml_collections.ConfigDict, write: bool = True) -> None:
  """Creates the workdir, or checks that the run it holds has the same config.

  Every process of a multi-process job checks; only the one that `write`s records the config.
  """
  if not workdir:
    raise ConfigError('--workdir is empty')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} exists and is not a directory')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'cannot create workdir {workdir}: {e.strerror}') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f'workdir {workdir} is not writable')
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    old_flat, new_flat = flatten(old), flatten(new)
    changed = sorted(k for k in old_flat.keys() | new_flat.keys()
                     if old_flat.get(k) != new_flat.get(k) and k.split('.')[0] not in RUN_CONTROL_KEYS)
    if changed:
      raise ConfigError(f'workdir {workdir} holds a run with a different config '
                        f'({", ".join(changed)} differ); use another --workdir')
  if write:
    write_json(path, new)
