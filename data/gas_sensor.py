"""UCI "Gas Sensor Array Drift" regression data, and an offline generator of the same files.

Arora, Cohen & Hazan (2018) study l_p regression on this dataset. The files are
`batch1.dat` ... `batch10.dat`, one example per line in LIBSVM style:

    <gas class>;<concentration> 1:<feature> 2:<feature> ... 128:<feature>

The regression target is the concentration. Real data: download the dataset's
archive from the UCI repository and unpack the `.dat` files into one folder.
The generator writes the same format from a planted linear model with strongly
correlated, badly scaled features (as sensor readings are), so the real reader
runs in tests and in `tiny` configs.
"""

import glob
import os
import tempfile

import numpy as np

FILE_PATTERN = 'batch*.dat'


def find_files(data_dir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(data_dir, FILE_PATTERN)),
                key=lambda p: int(''.join(c for c in os.path.basename(p) if c.isdigit()) or 0))


def parse_line(line: str) -> tuple[float, dict[int, float]]:
  head, *pairs = line.split()
  _, concentration = head.split(';')
  features = {}
  for pair in pairs:
    index, value = pair.split(':')
    features[int(index)] = float(value)
  return float(concentration), features


def read(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """All examples of all batch files: features [n, d] (missing -> 0) and concentrations [n]."""
  files = find_files(data_dir)
  if not files:
    raise FileNotFoundError(f'no {FILE_PATTERN} files in {data_dir}')
  targets, rows = [], []
  for path in files:
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          target, features = parse_line(line)
        except ValueError as e:
          raise ValueError(f'{path}:{number}: not a gas-sensor line ({e})') from None
        targets.append(target)
        rows.append(features)
  num_features = max(max(r) for r in rows if r)
  x = np.zeros((len(rows), num_features), np.float64)
  for i, features in enumerate(rows):
    for index, value in features.items():
      x[i, index - 1] = value
  return x, np.asarray(targets)


def standardized_splits(data_dir: str, eval_fraction: float, seed: int):
  """Train/eval dicts of float32 'x' and 'y', standardized with training statistics."""
  x, y = read(data_dir)
  order = np.random.default_rng(seed).permutation(len(y))
  num_eval = int(round(len(y) * eval_fraction))
  eval_rows, train_rows = order[:num_eval], order[num_eval:]
  x_mean, x_std = x[train_rows].mean(0), x[train_rows].std(0) + 1e-12
  y_mean, y_std = y[train_rows].mean(), y[train_rows].std() + 1e-12
  split = lambda rows: {'x': ((x[rows] - x_mean) / x_std).astype(np.float32),
                        'y': ((y[rows] - y_mean) / y_std).astype(np.float32)}
  return split(train_rows), split(eval_rows)


def generate(data_dir: str, num_examples: int, num_features: int, seed: int,
             noise: float = 0.2, num_files: int = 10) -> None:
  """Writes batch1.dat..batchN.dat from y = x_std . w* + noise, with correlated features.

  Written to a temporary folder and renamed into place, so a crash or a second
  process never leaves a half-written data set behind.
  """
  rng = np.random.default_rng(seed)
  # Correlated features: a random rotation of spectrum 1 .. 1e-2, then very different scales.
  q, _ = np.linalg.qr(rng.normal(size=(num_features, num_features)))
  spectrum = np.logspace(0, -2, num_features)
  latent = rng.normal(size=(num_examples, num_features)) @ (q * spectrum) @ q.T
  scales = np.logspace(0, 4, num_features)[rng.permutation(num_features)]
  features = latent * scales + rng.normal(size=num_features) * scales
  standardized = (latent - latent.mean(0)) / latent.std(0)
  w_star = rng.normal(size=num_features) / np.sqrt(num_features)
  signal = standardized @ w_star
  concentration = 100.0 + 50.0 * (signal / signal.std() + noise * rng.normal(size=num_examples))
  gas = rng.integers(1, 7, size=num_examples)

  parent = os.path.dirname(os.path.abspath(data_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.gas_sensor-', dir=parent)
  for part, rows in enumerate(np.array_split(np.arange(num_examples), num_files), 1):
    with open(os.path.join(staging, f'batch{part}.dat'), 'w') as f:
      for i in rows:
        values = ' '.join(f'{j + 1}:{v:.6g}' for j, v in enumerate(features[i]))
        f.write(f'{gas[i]};{concentration[i]:.6g} {values}\n')
  try:
    os.rename(staging, data_dir)
  except OSError:  # another process finished first
    if not find_files(data_dir):
      raise
    for name in os.listdir(staging):
      os.remove(os.path.join(staging, name))
    os.rmdir(staging)
