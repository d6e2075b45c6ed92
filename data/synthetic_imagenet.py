"""An offline ImageNet stand-in, written as the prepared tfds dataset imagenet2012.

No ImageNet data can be downloaded here, so tests and `tiny` configs run the real
pipeline (data/imagenet.py) on this stand-in: JPEG images of varying size (sides
MIN_SIDE..MAX_SIDE pixels, about IMAGE_SIZE), splits train and validation, and the
registered builder's features (image, label, file_name).

A class is a pattern and a pair of colours, drawn inside a disc (OBJECT_RADIUS of
the shorter side, anywhere in the image) on a background of a random pattern in a
random colour pair: an object on clutter, so that a model must find the object, and
a small random crop may miss it (as on ImageNet). The patterns survive what training
does to an image (random crops, horizontal flips, resizing to 32 pixels): horizontal
stripes, vertical stripes, a checkerboard and a diagonal checkerboard, each with a
random period (PERIOD_RANGE pixels), phase and tilt (up to MAX_TILT degrees). The
colours are a pair of PALETTE_SIZE hues, unordered, since a half-period shift swaps
them. Each texture jitters its colours, and the image gets pixel noise. 10 classes
are 4 patterns x 3 colour pairs (the last pair for 2 patterns only).
"""

import colorsys
import io
import itertools

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from errors import ConfigError
from data import imagenet, tfds_writer

VERSION = '5.1.0'  # the version of tfds' registered imagenet2012 builder
IMAGE_SIZE = 64
MIN_SIDE, MAX_SIDE = IMAGE_SIZE - 8, IMAGE_SIZE + 16  # height and width, each drawn uniformly
NUM_PATTERNS = 4  # horizontal stripes, vertical stripes, checkerboard, diagonal checkerboard
PALETTE_SIZE = 12  # hues, evenly spaced
MAX_CLASSES = NUM_PATTERNS * PALETTE_SIZE * (PALETTE_SIZE - 1) // 2
PERIOD_RANGE = (9.0, 15.0)  # pixels: still 4+ pixels once a whole image is resized to 32
MAX_TILT = 10.0  # degrees
COLOUR_JITTER = 20.0  # per channel, on 0..255
PIXEL_NOISE = 12.0  # standard deviation, on 0..255
OBJECT_RADIUS = (0.25, 0.45)  # of the shorter side: the disc holding the class's pattern
JPEG_QUALITY = 90
PALETTE_SEED = 2012  # the classes are the same for every set; `seed` picks the images
SPLIT_SEEDS = {'train': 0, 'validation': 1}


def _palette() -> np.ndarray:
  """PALETTE_SIZE saturated colours [PALETTE_SIZE, 3] on 0..255, evenly spaced in hue."""
  return 255 * np.array([colorsys.hsv_to_rgb(i / PALETTE_SIZE, 0.85, 0.9) for i in range(PALETTE_SIZE)],
                        np.float32)


def _colour_pairs() -> list[tuple[int, int]]:
  """The unordered palette pairs in a fixed shuffled order (in the palette's, the first pairs would share a colour)."""
  pairs = list(itertools.combinations(range(PALETTE_SIZE), 2))
  return [pairs[i] for i in np.random.default_rng(PALETTE_SEED).permutation(len(pairs))]


PALETTE = _palette()
COLOUR_PAIRS = _colour_pairs()


def class_of(label: int) -> tuple[int, tuple[int, int]]:
  """(pattern, colour pair) of class `label`."""
  return label % NUM_PATTERNS, COLOUR_PAIRS[label // NUM_PATTERNS]


def _texture(rng: np.random.Generator, pattern: int, pair: tuple[int, int], height: int, width: int) -> np.ndarray:
  """A jittered two-colour pattern with a random period, phase and tilt: float32 [height, width, 3] on 0..255."""
  tilt = np.deg2rad(rng.uniform(-MAX_TILT, MAX_TILT))
  frequency = 2 * np.pi / rng.uniform(*PERIOD_RANGE)
  phases = rng.uniform(0, 2 * np.pi, size=2)
  y, x = np.mgrid[:height, :width].astype(np.float32)
  down = np.float32(np.cos(tilt)) * y + np.float32(np.sin(tilt)) * x  # constant along (tilted) rows
  across = np.float32(np.cos(tilt)) * x - np.float32(np.sin(tilt)) * y  # constant along (tilted) columns
  if pattern == 3:  # the checkerboard turned 45 degrees
    down, across = (down + across) / np.sqrt(np.float32(2)), (across - down) / np.sqrt(np.float32(2))
  horizontal = np.sin(frequency * down + phases[0]) if pattern != 1 else 1
  vertical = np.sin(frequency * across + phases[1]) if pattern != 0 else 1
  weight = 0.5 + 0.5 * np.tanh(3 * horizontal * vertical)[..., None]  # soft edges: 0 one colour, 1 the other
  colours = PALETTE[list(pair)] + rng.normal(0, COLOUR_JITTER, size=(2, 3)).astype(np.float32)
  return (1 - weight) * colours[0] + weight * colours[1]


def draw_image(rng: np.random.Generator, label: int) -> np.ndarray:
  """One image of class `label`: its pattern inside a disc, on a background of another pattern; uint8 [h, w, 3]."""
  height, width = rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2)
  pattern, pair = class_of(label)
  background_pair = COLOUR_PAIRS[rng.integers(len(COLOUR_PAIRS))]
  background = _texture(rng, rng.integers(NUM_PATTERNS), background_pair, height, width)
  radius = rng.uniform(*OBJECT_RADIUS) * min(height, width)
  centre = [rng.uniform(radius, side - radius) for side in (height, width)]
  y, x = np.mgrid[:height, :width].astype(np.float32)
  distance = np.hypot(y - centre[0], x - centre[1])
  inside = (0.5 + 0.5 * np.tanh((radius - distance) / 1.5))[..., None]  # a soft-edged disc
  image = inside * _texture(rng, pattern, pair, height, width) + (1 - inside) * background
  image += PIXEL_NOISE * rng.standard_normal(size=image.shape, dtype=np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray) -> bytes:
  encoded = io.BytesIO()
  Image.fromarray(image).save(encoded, format='JPEG', quality=JPEG_QUALITY)
  return encoded.getvalue()


def sample_split(split: str, num_classes: int, per_class: int, seed: int) -> list[dict]:
  """The examples of `split`: per_class JPEGs of each class, a pure function of (split, seed)."""
  if not 1 <= num_classes <= MAX_CLASSES:
    raise ConfigError(f'generated_classes={num_classes} must be in [1, {MAX_CLASSES}]')
  rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
  labels = np.tile(np.arange(num_classes), per_class)
  return [{'image': jpeg(draw_image(rng, label)), 'label': int(label),
           'file_name': f'synthetic_{split}_{i:07d}.JPEG'} for i, label in enumerate(labels)]


def generate(data_dir: str, num_classes: int, train_per_class: int, eval_per_class: int, seed: int) -> None:
  """Writes splits train and validation (per_class images of each of num_classes) into tfds `data_dir`.

  `tfds.builder('imagenet2012', data_dir=data_dir)` then reads them as it would the
  real data (data/tfds_writer.py). The label feature on disk says num_classes; the
  registered builder's own info keeps saying 1000, which is why imagenet.num_classes
  reads the written one.
  """
  splits = {'train': sample_split('train', num_classes, train_per_class, seed),
            'validation': sample_split('validation', num_classes, eval_per_class, seed)}
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
      'label': tfds.features.ClassLabel(num_classes=num_classes),
      'file_name': tfds.features.Text(),
  })
  tfds_writer.write(data_dir, imagenet.DATASET, VERSION, features,
                    'Synthetic patterned-object images (data/synthetic_imagenet.py).',
                    {split: [(example['file_name'], example) for example in examples]
                     for split, examples in splits.items()},
                    lambda: imagenet.is_prepared(data_dir))


def prepare_tiny(data_dir: str, num_classes: int, train_per_class: int, eval_per_class: int, seed: int) -> None:
  """Generates the set unless `data_dir` already holds a prepared imagenet2012 (real or generated)."""
  if not imagenet.is_prepared(data_dir):
    generate(data_dir, num_classes, train_per_class, eval_per_class, seed)
