import io
import os

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from errors import ConfigError
from data import imagenet, synthetic_imagenet

NUM_CLASSES, TRAIN_PER_CLASS, EVAL_PER_CLASS, SEED = 4, 24, 6, 3
NUM_TRAIN, NUM_EVAL = NUM_CLASSES * TRAIN_PER_CLASS, NUM_CLASSES * EVAL_PER_CLASS
SIZE = 32  # the image_size the pipelines produce
LOWEST = (0 - np.array(imagenet.MEAN_RGB)) / imagenet.STDDEV_RGB
HIGHEST = (255 - np.array(imagenet.MEAN_RGB)) / imagenet.STDDEV_RGB


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  synthetic_imagenet.generate(path, NUM_CLASSES, TRAIN_PER_CLASS, EVAL_PER_CLASS, SEED)
  return path


def stored(imagenet_dir, split):
  """The stored examples of `split`, images as JPEG bytes, in stored order."""
  builder = tfds.builder(imagenet.DATASET, data_dir=imagenet_dir)
  records = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()},
                               read_config=tfds.ReadConfig(interleave_cycle_length=1))
  return list(tfds.as_numpy(records))


def take(stream, count):
  return [next(stream) for _ in range(count)]


def sorted_images(batches):
  """The images of the batches as a multiset (sorted bytes): equal whatever order they came in."""
  return sorted(image.tobytes() for batch in batches for image in batch['image'])


def test_the_registered_tfds_builder_reads_the_generated_set(imagenet_dir, monkeypatch):
  builder = tfds.builder(imagenet.DATASET, data_dir=imagenet_dir)
  assert type(builder).__module__.startswith('tensorflow_datasets.datasets.imagenet2012')
  assert str(builder.info.version) == synthetic_imagenet.VERSION
  assert imagenet.split_sizes(imagenet_dir) == {'train': NUM_TRAIN, 'validation': NUM_EVAL}
  assert builder.info.features['label'].num_classes == 1000  # the builder's code says so, whatever is on disk
  assert imagenet.num_classes(imagenet_dir) == NUM_CLASSES  # the features written with the data
  train = stored(imagenet_dir, 'train')
  assert set(train[0]) == {'image', 'label', 'file_name'}
  assert np.bincount([example['label'] for example in train]).tolist() == [TRAIN_PER_CLASS] * NUM_CLASSES
  for example in train[:10]:
    assert example['image'][:2] == b'\xff\xd8'  # JPEG
    sides = Image.open(io.BytesIO(example['image'])).size
    assert synthetic_imagenet.MIN_SIDE <= min(sides) <= max(sides) <= synthetic_imagenet.MAX_SIDE
  assert os.listdir(imagenet_dir) == [imagenet.DATASET]  # no staging folder left behind
  synthetic_imagenet.generate(imagenet_dir, 2, 5, 1, SEED + 1)  # already there: the first one stays
  assert imagenet.split_sizes(imagenet_dir) == {'train': NUM_TRAIN, 'validation': NUM_EVAL}
  assert stored(imagenet_dir, 'train')[0] == train[0] and os.listdir(imagenet_dir) == [imagenet.DATASET]
  monkeypatch.setattr(synthetic_imagenet, 'generate', lambda *_: pytest.fail('generated again'))
  synthetic_imagenet.prepare_tiny(imagenet_dir, NUM_CLASSES, TRAIN_PER_CLASS, EVAL_PER_CLASS, SEED)


def test_generation_is_deterministic_in_the_seed(imagenet_dir):
  examples = synthetic_imagenet.sample_split('validation', NUM_CLASSES, EVAL_PER_CLASS, SEED)
  assert examples == synthetic_imagenet.sample_split('validation', NUM_CLASSES, EVAL_PER_CLASS, SEED)
  other = synthetic_imagenet.sample_split('validation', NUM_CLASSES, EVAL_PER_CLASS, SEED + 1)
  assert not {e['image'] for e in examples} & {e['image'] for e in other}
  train = synthetic_imagenet.sample_split('train', NUM_CLASSES, EVAL_PER_CLASS, SEED)
  assert not {e['image'] for e in examples} & {e['image'] for e in train}
  as_stored = {(e['image'], int(e['label']), e['file_name'].decode()) for e in stored(imagenet_dir, 'validation')}
  assert as_stored == {(e['image'], e['label'], e['file_name']) for e in examples}
  with pytest.raises(ConfigError, match='generated_classes'):
    synthetic_imagenet.sample_split('train', synthetic_imagenet.MAX_CLASSES + 1, 1, SEED)


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(ConfigError, match='tfds build imagenet2012') as error:
    imagenet.check_prepared(str(tmp_path))
  assert '\n' not in str(error.value) and 'downloads/manual' in str(error.value)
  with pytest.raises(ConfigError, match='tfds build imagenet2012'):
    imagenet.train_batches(str(tmp_path), 8, SIZE, SEED, 0, 0, 1)


def test_train_batches_shapes_dtypes_and_ranges(imagenet_dir):
  batches = take(imagenet.train_batches(imagenet_dir, 16, SIZE, SEED, 0, 1, 2), 2)
  for batch in batches:
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (8, SIZE, SIZE, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
    assert 0 <= batch['label'].min() and batch['label'].max() < NUM_CLASSES
    assert np.all(LOWEST - 1e-5 <= batch['image']) and np.all(batch['image'] <= HIGHEST + 1e-5)
    assert batch['image'].std() > 0.3
  bfloat16 = take(imagenet.train_batches(imagenet_dir, 16, SIZE, SEED, 0, 1, 2, dtype='bfloat16'), 2)
  for low, high in zip(bfloat16, batches):
    assert low['image'].dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(low['image'].astype(np.float32), high['image'], rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(low['label'], high['label'])
  with pytest.raises(ConfigError, match='multiple of the process count'):
    imagenet.train_batches(imagenet_dir, 15, SIZE, SEED, 0, 0, 2)
  with pytest.raises(ConfigError, match='cannot fill'):
    imagenet.train_batches(imagenet_dir, 2 * NUM_TRAIN, SIZE, SEED, 0, 0, 2)
  with pytest.raises(ConfigError, match='float16'):
    imagenet.train_batches(imagenet_dir, 16, SIZE, SEED, 0, 0, 2, dtype='float16')


def test_random_crops_cover_the_area_and_aspect_ranges():
  shape = tf.constant([60, 80, 3])
  windows = np.array([imagenet.random_crop_window(shape, tf.constant([SEED, i])).numpy() for i in range(100)])
  tops, lefts, heights, widths = windows.T
  assert np.all(tops >= 0) and np.all(lefts >= 0) and np.all(tops + heights <= 60) and np.all(lefts + widths <= 80)
  areas = heights * widths / (60 * 80)
  assert areas.min() >= 0.07 and areas.min() < 0.2 and areas.max() > 0.8
  aspect_ratios = widths / heights
  assert 0.7 <= aspect_ratios.min() < 0.85 and 1.2 < aspect_ratios.max() <= 1.4
  assert len({tuple(w) for w in windows}) > 90
  # No crop of at least 8% of a 10 x 1000 image has an aspect ratio near 1: the center square instead.
  window = imagenet.random_crop_window(tf.constant([10, 1000, 3]), tf.constant([SEED, 0]))
  np.testing.assert_array_equal(window, [1, 496, 8, 8])


def test_flips_happen_and_depend_on_the_flip_seed_only(imagenet_dir):
  encoded = tf.constant(stored(imagenet_dir, 'train')[0]['image'])
  crop_seed = tf.constant([SEED, 1])
  images = [imagenet.train_image(encoded, crop_seed, tf.constant([SEED, i]), SIZE).numpy() for i in range(8)]
  unflipped = [np.array_equal(image, images[0]) for image in images]
  flipped = [np.array_equal(image, images[0][:, ::-1]) for image in images]
  assert all(a or b for a, b in zip(unflipped, flipped)) and any(flipped)
  assert not np.array_equal(images[0], images[0][:, ::-1])
  other_crop = imagenet.train_image(encoded, tf.constant([SEED, 2]), tf.constant([SEED, 0]), SIZE).numpy()
  assert not np.array_equal(other_crop, images[0]) and not np.array_equal(other_crop, images[0][:, ::-1])


def test_augmentation_depends_on_seed_epoch_and_example_only(imagenet_dir):
  """An epoch's set of images is the same for one process as for two (each half the examples, in another
  order); the next epoch and another seed crop differently; the same (seed, step) gives the same batch."""
  one = take(imagenet.train_batches(imagenet_dir, NUM_TRAIN, SIZE, SEED, 0, 0, 1), 2)  # a batch is an epoch
  halves = [next(imagenet.train_batches(imagenet_dir, NUM_TRAIN, SIZE, SEED, 0, p, 2)) for p in (0, 1)]
  assert sorted_images(halves) == sorted_images(one[:1])  # disjoint halves, the same crops
  assert sorted(np.concatenate([h['label'] for h in halves])) == sorted(one[0]['label'])
  assert not np.array_equal(one[0]['label'], np.sort(one[0]['label']))  # shuffled
  assert sorted(one[1]['label']) == sorted(one[0]['label'])
  first, second = set(sorted_images(one[:1])), set(sorted_images(one[1:]))
  assert not first & second  # the next epoch crops every example anew
  other_seed = next(imagenet.train_batches(imagenet_dir, NUM_TRAIN, SIZE, SEED + 1, 0, 0, 1))
  assert not first & set(sorted_images([other_seed]))
  again = next(imagenet.train_batches(imagenet_dir, NUM_TRAIN, SIZE, SEED, 1, 0, 1))
  for key, array in one[1].items():
    np.testing.assert_array_equal(again[key], array)


def test_train_batches_resume_exactly_across_epochs(imagenet_dir, monkeypatch):
  monkeypatch.setattr(imagenet, 'WINDOW', 7)  # windows end inside batches
  steps_per_epoch, total = NUM_TRAIN // 2 // 8, 14  # two processes of 8 rows: 6 steps an epoch
  for process in (0, 1):
    stream = take(imagenet.train_batches(imagenet_dir, 16, SIZE, SEED, 0, process, 2), total)
    for start in (1, steps_per_epoch, steps_per_epoch + 2, 2 * steps_per_epoch + 1):
      resumed = take(imagenet.train_batches(imagenet_dir, 16, SIZE, SEED, start, process, 2), 1)
      for key, array in stream[start].items():
        np.testing.assert_array_equal(resumed[0][key], array, err_msg=f'process {process}, step {start}')
    resumed = take(imagenet.train_batches(imagenet_dir, 16, SIZE, SEED, 3, process, 2), total - 3)
    for step, batch in enumerate(resumed, 3):
      for key, array in stream[step].items():
        np.testing.assert_array_equal(batch[key], array, err_msg=f'process {process}, step {step}')


def test_eval_batches_cover_every_example_once_in_stored_order(imagenet_dir):
  whole = list(imagenet.eval_batches(imagenet_dir, 16, SIZE, 0, 1))
  assert len(whole) == 2
  for batch in whole:
    assert batch['image'].shape == (16, SIZE, SIZE, 3) and batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32 and batch['weight'].dtype == np.float32
  weight = np.concatenate([b['weight'] for b in whole])
  np.testing.assert_array_equal(weight, np.arange(32) < NUM_EVAL)  # the last batch padded
  labels = np.concatenate([b['label'] for b in whole])[:NUM_EVAL]
  np.testing.assert_array_equal(labels, [e['label'] for e in stored(imagenet_dir, 'validation')])
  again = list(imagenet.eval_batches(imagenet_dir, 16, SIZE, 0, 1))
  for batch, repeated in zip(whole, again):
    for key, array in batch.items():
      np.testing.assert_array_equal(repeated[key], array)
  halves = [list(imagenet.eval_batches(imagenet_dir, 16, SIZE, p, 2)) for p in (0, 1)]
  assert len(halves[0]) == len(halves[1]) == 2
  for batch, first, second in zip(whole, *halves):  # global row r belongs to process r // 8
    for key, array in batch.items():
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), array)
  assert halves[1][1]['weight'].sum() == 0  # all padding, still yielded
  head = list(imagenet.eval_batches(imagenet_dir, 8, SIZE, 0, 1, max_examples=10))
  assert len(head) == 2 and sum(b['weight'].sum() for b in head) == 10
  np.testing.assert_array_equal(np.concatenate([b['image'] for b in head])[:10], whole[0]['image'][:10])
  bfloat16 = next(imagenet.eval_batches(imagenet_dir, 16, SIZE, 0, 1, dtype='bfloat16'))
  assert bfloat16['image'].dtype == ml_dtypes.bfloat16


def test_eval_image_is_the_center_of_the_resized_image():
  """An image whose shorter side is already image_size / 0.875 is only cropped: [3:52, 11:60] of 56 x 72."""
  pixels = np.random.default_rng(SEED).integers(0, 256, size=(56, 72, 3), dtype=np.uint8)
  encoded = tf.io.encode_jpeg(pixels, quality=95)
  image = imagenet.eval_image(encoded, 49).numpy()
  decoded = tf.io.decode_jpeg(encoded).numpy().astype(np.float32)
  expected = (decoded[3:52, 11:60] - imagenet.MEAN_RGB) / imagenet.STDDEV_RGB
  np.testing.assert_allclose(image, expected, atol=1e-4)
  wide = imagenet.eval_image(tf.io.encode_jpeg(np.zeros((100, 300, 3), np.uint8)), SIZE)
  assert wide.shape == (SIZE, SIZE, 3)
