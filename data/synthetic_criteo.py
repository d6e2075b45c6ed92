"""Offline Criteo-format click logs from a planted model, with the Bayes-optimal scores of its eval split.

No Criteo data can be downloaded here, so tests and `tiny` configs run the real
reader (data/criteo.py) on this stand-in, laid out as it expects:

    <dataset_dir>/train/part-00000.tsv ...   40 tab-separated fields per line, as Criteo's
    <dataset_dir>/eval/part-00000.tsv
    <dataset_dir>/bayes.json                 the ceiling a model can reach on eval/

Each impression is drawn independently:

  * 13 counts, floor(exp(N(mu, sigma))) - 1, clipped at 0 except I2 (which has
    -1s, as Criteo's does); each missing (an empty field) at its own rate, from 1%
    to 75% as in Criteo.
  * 26 categoricals, Zipf-distributed (exponent ZIPF_EXPONENT) over a vocabulary of
    VOCAB_SIZES values, written as a fixed 8-hex-digit hash of (feature, value); each
    missing at 2% to 45%.
  * the click probability sigmoid(bias + dense + categorical + interactions), with
      dense          a linear function of the log(1 + count) features (missing = 0,
                     exactly what the reader gives a model),
      categorical    a random effect per value (and for "missing") of 20 of the
                     features; the other 6 are noise,
      interactions   dot products of 4-dim value embeddings for CATEGORICAL_PAIRS, and
                     for DENSE_CATEGORICAL_PAIRS a feature's standardized log count
                     times a per-value slope: the kind of term DLRM's dot interactions
                     model,
    the per-value effects, embeddings and slopes shrinking with the value's
    frequency rank r as 1 / (1 + r / TAIL_RANK) (rare values matter less), each part
    scaled to the standard deviation in PART_SCALES over the data, and the
    bias set so that BASE_RATE of impressions are clicked on average (Criteo: ~25%).

bayes.json holds the eval split's Bayes-optimal AUC and log loss (those of the true
probabilities against the drawn labels), the log loss of the best constant (the
entropy of eval's click rate), that rate, and the generation's settings.
"""

import json
import os
import shutil
import tempfile
from typing import Sequence

import numpy as np

from errors import ConfigError
from data import criteo

BAYES = 'bayes.json'
BASE_RATE = 0.25
ZIPF_EXPONENT = 1.2
TAIL_RANK = 30  # a value of frequency rank r (0: the most frequent) acts 1 / (1 + r / TAIL_RANK) as strongly
EMBEDDING_DIM = 4
NUM_TRAIN_FILES = 8
# Criteo-like: a few tiny vocabularies, most of hundreds to thousands of values.
VOCAB_SIZES = (1000, 500, 5000, 2000, 200, 24, 1200, 300, 3, 5000, 2500, 3000, 1500, 25, 2500,
               4000, 10, 1500, 2000, 4, 5000, 15, 12, 3000, 50, 2500)
DENSE_MISSING = (0.45, 0.01, 0.2, 0.2, 0.03, 0.2, 0.04, 0.01, 0.04, 0.45, 0.04, 0.75, 0.2)
SPARSE_MISSING = (0.02, 0.02, 0.03, 0.03, 0.02, 0.1, 0.02, 0.02, 0.02, 0.03, 0.02, 0.03, 0.02, 0.02,
                  0.02, 0.03, 0.02, 0.02, 0.45, 0.45, 0.03, 0.45, 0.02, 0.03, 0.45, 0.03)
NEGATIVE_DENSE = 1  # I2: its counts go down to -1
NOISE_FEATURES = (3, 8, 12, 17, 22, 24)  # categoricals with no effect of their own
CATEGORICAL_PAIRS = ((0, 1), (2, 6), (4, 9), (5, 13), (10, 15), (11, 20), (14, 18), (16, 19))
DENSE_CATEGORICAL_PAIRS = ((0, 5), (2, 4), (4, 16), (6, 1), (9, 13))  # (dense, categorical)
PART_SCALES = {'dense': 0.6, 'categorical': 1.0, 'interactions': 0.7}


def _value_hashes(feature: int, vocab_size: int) -> np.ndarray:
  """The 32-bit hash written for values 0 .. vocab_size - 1 of a feature: distinct, and fixed
  for every seed (an odd multiplier and an offset are a bijection mod 2**32)."""
  values = np.arange(1, vocab_size + 1, dtype=np.uint64)
  offset = np.uint64((feature + 1) * 0x85EBCA77 % 2 ** 32)
  return ((values * np.uint64(0x9E3779B1) + offset) % np.uint64(2 ** 32)).astype(np.uint32)


def _zipf(rng: np.random.Generator, vocab_size: int, num: int) -> np.ndarray:
  probabilities = np.arange(1, vocab_size + 1, dtype=np.float64) ** -ZIPF_EXPONENT
  return rng.choice(vocab_size, size=num, p=probabilities / probabilities.sum())


def _value_scales(vocab_size: int) -> np.ndarray:
  """How strongly each value (by frequency rank, then "missing") acts: rare values less, so that
  most of the signal lies in values seen often enough to be learnt from a few 100k impressions."""
  return np.append(1 / (1 + np.arange(vocab_size) / TAIL_RANK), 1.0)


def _standardized(x: np.ndarray) -> np.ndarray:
  return (x - x.mean()) / (x.std() + 1e-12)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1 / (1 + np.exp(-x))


def _bias(logits: np.ndarray) -> float:
  """The b with mean(sigmoid(logits + b)) = BASE_RATE, by bisection."""
  low, high = -30.0, 30.0
  for _ in range(60):
    middle = (low + high) / 2
    low, high = (middle, high) if _sigmoid(logits + middle).mean() < BASE_RATE else (low, middle)
  return (low + high) / 2


def _sample(num: int, seed: int, vocab_sizes: Sequence[int] = VOCAB_SIZES):
  """`num` impressions: counts int64 [num, 13], values int64 [num, 26] (-1 missing),
  dense_missing bool [num, 13], probabilities float64 [num], labels bool [num]."""
  model = np.random.default_rng([seed, 0])
  data = np.random.default_rng([seed, 1])
  mu, sigma = model.uniform(0, 3, criteo.NUM_DENSE), model.uniform(0.7, 1.6, criteo.NUM_DENSE)
  counts = np.floor(np.exp(mu + sigma * data.normal(size=(num, criteo.NUM_DENSE)))).astype(np.int64) - 1
  clip = np.arange(criteo.NUM_DENSE) != NEGATIVE_DENSE
  counts[:, clip] = np.maximum(counts[:, clip], 0)
  dense_missing = data.random((num, criteo.NUM_DENSE)) < np.asarray(DENSE_MISSING)
  features = np.where(dense_missing, 0.0, np.log1p(np.maximum(counts, 0)))  # what the reader gives

  values = np.stack([_zipf(data, size, num) for size in vocab_sizes], axis=1)
  values[data.random(values.shape) < np.asarray(SPARSE_MISSING)] = -1
  # Tables have a last row for "missing" (value -1).
  scales = [_value_scales(size) for size in vocab_sizes]
  effects = [model.normal(size=size + 1) * scale * (f not in NOISE_FEATURES)
             for f, (size, scale) in enumerate(zip(vocab_sizes, scales))]
  embeddings = [model.normal(size=(size + 1, EMBEDDING_DIM)) * scale[:, None] / np.sqrt(EMBEDDING_DIM)
                for size, scale in zip(vocab_sizes, scales)]
  slopes = [model.normal(size=size + 1) * scale for size, scale in zip(vocab_sizes, scales)]

  dense = features @ model.normal(size=criteo.NUM_DENSE)
  categorical = sum(effects[f][values[:, f]] for f in range(len(vocab_sizes)))
  interactions = sum(np.sum(embeddings[f][values[:, f]] * embeddings[g][values[:, g]], axis=1)
                     for f, g in CATEGORICAL_PAIRS)
  interactions = interactions + sum(_standardized(features[:, j]) * slopes[f][values[:, f]]
                                    for j, f in DENSE_CATEGORICAL_PAIRS)
  parts = {'dense': dense, 'categorical': categorical, 'interactions': interactions}
  logits = sum(PART_SCALES[name] * _standardized(part) for name, part in parts.items())
  probabilities = _sigmoid(logits + _bias(logits))
  labels = data.random(num) < probabilities
  return counts, values, dense_missing, probabilities, labels


def _lines(counts: np.ndarray, values: np.ndarray, dense_missing: np.ndarray,
           labels: np.ndarray) -> list[str]:
  columns = [np.where(labels, '1', '0').astype(object)]
  for j in range(criteo.NUM_DENSE):
    column = np.array(list(map(str, counts[:, j].tolist())), dtype=object)
    column[dense_missing[:, j]] = ''
    columns.append(column)
  for f in range(values.shape[1]):
    hexes = [f'{h:08x}' for h in _value_hashes(f, int(values[:, f].max()) + 1).tolist()]
    columns.append(np.array(hexes + [''], dtype=object)[values[:, f]])  # -1: the last, ''
  return ['\t'.join(row) for row in zip(*columns)]


def _log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
  return float(-np.mean(np.where(labels, np.log(probabilities), np.log1p(-probabilities))))


def _settings(num_train: int, num_eval: int, seed: int, vocab_sizes: Sequence[int],
              num_train_files: int) -> dict:
  return {'num_train': num_train, 'num_eval': num_eval, 'seed': seed,
          'vocab_sizes': list(vocab_sizes), 'num_train_files': num_train_files}


def _existing(dataset_dir: str, settings: dict) -> dict | None:
  """bayes.json of a finished generation with these settings, None if there is none."""
  path = os.path.join(dataset_dir, BAYES)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    bayes = json.load(f)
  differ = [key for key in settings if bayes['settings'].get(key) != settings[key]]
  if differ:
    ours = ', '.join(f'{key}={bayes["settings"].get(key)}' for key in differ)
    wanted = ', '.join(f'{key}={settings[key]}' for key in differ)
    raise ConfigError(f'{dataset_dir} holds synthetic Criteo data generated with other settings '
                      f'({ours}, not {wanted}): delete it, or choose another folder')
  return bayes


def generate(dataset_dir: str, num_train: int, num_eval: int, seed: int,
             vocab_sizes: Sequence[int] = VOCAB_SIZES, num_train_files: int = NUM_TRAIN_FILES) -> dict:
  """Writes train/ (num_train lines in num_train_files parts) and eval/ (num_eval lines, one part).

  A pure function of the arguments. Everything is written into a hidden folder next
  to dataset_dir, bayes.json last, and renamed into place, so a crash never leaves a
  folder that looks generated, and when processes generate concurrently the first
  one's folder stays. Returns bayes.json: auc, log_loss, constant_log_loss,
  base_rate (of eval) and settings.
  """
  if len(vocab_sizes) != criteo.NUM_SPARSE or min(vocab_sizes) < 1:
    raise ConfigError(f'vocab_sizes={list(vocab_sizes)} must be {criteo.NUM_SPARSE} sizes of at least 1')
  if num_train < num_train_files or num_eval < 1:
    raise ConfigError(f'num_train={num_train} must fill num_train_files={num_train_files} and '
                      f'num_eval={num_eval} must be at least 1')
  settings = _settings(num_train, num_eval, seed, vocab_sizes, num_train_files)
  counts, values, dense_missing, probabilities, labels = _sample(num_train + num_eval, seed, vocab_sizes)
  lines = _lines(counts, values, dense_missing, labels)
  eval_labels, eval_probabilities = labels[num_train:], probabilities[num_train:]
  rate = float(eval_labels.mean())
  bayes = {'auc': criteo.auc(eval_labels, eval_probabilities),
           'log_loss': _log_loss(eval_labels, eval_probabilities),
           'constant_log_loss': _log_loss(eval_labels, np.full(num_eval, rate)) if 0 < rate < 1 else 0.0,
           'base_rate': rate, 'settings': settings}

  parent = os.path.dirname(os.path.abspath(dataset_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(dataset_dir))}-', dir=parent)
  try:
    os.chmod(staging, 0o755)  # mkdtemp's folder is private; the data is not
    bounds = np.linspace(0, num_train, num_train_files + 1).astype(int).tolist()
    parts = [(criteo.TRAIN, i, lines[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    for split, index, part in parts + [(criteo.EVAL, 0, lines[num_train:])]:
      os.makedirs(os.path.join(staging, split), exist_ok=True)
      with open(os.path.join(staging, split, f'part-{index:05d}.tsv'), 'w') as f:
        f.write('\n'.join(part) + '\n')
    with open(os.path.join(staging, BAYES), 'w') as f:
      json.dump(bayes, f, indent=2, sort_keys=True)
    try:
      os.rename(staging, dataset_dir)  # replaces dataset_dir only if it is an empty folder
    except OSError:  # another process finished first
      existing = _existing(dataset_dir, settings)
      if existing is None:
        raise
      return existing
    return bayes
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def prepare_tiny(dataset_dir: str, num_train: int, num_eval: int, seed: int) -> dict:
  """The bayes.json of dataset_dir, generating the data first unless it is already there."""
  return (_existing(dataset_dir, _settings(num_train, num_eval, seed, VOCAB_SIZES, NUM_TRAIN_FILES))
          or generate(dataset_dir, num_train, num_eval, seed))
