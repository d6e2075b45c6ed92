"""ImageNet (ILSVRC 2012) classification via tensorflow-datasets: augmented training batches, center-crop eval.

The data is the prepared tfds dataset `imagenet2012` (train 1,281,167 images,
validation 50,000, 1000 classes); data/synthetic_imagenet.py writes a small set in
the same on-disk form, so tests and `tiny` configs run exactly this code.

Every batch is a dict of numpy arrays, `rows` = global batch size / process count:

    image    [rows, image_size, image_size, 3] float32 or bfloat16: RGB, each channel
             normalized as (x - MEAN_RGB) / STDDEV_RGB, x in 0..255
    label    int32 [rows]
    weight   float32 [rows], eval only: 1, or 0 on the rows that pad the last batch

Training: an Inception-style random crop (area 8%..100% of the image, aspect ratio
3/4..4/3, CROP_ATTEMPTS tries, else the eval center crop), decoded straight from the
JPEG, resized to image_size (bicubic), and a random horizontal flip. Evaluation: the
shorter side resized to image_size / EVAL_CROP_FRACTION (rounded: 256 for 224; bicubic), then
the central image_size square. Both clip the resized pixels to 0..255 (bicubic
overshoots) before normalizing.
"""

import functools
import itertools
import os
from typing import Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported: less C++ chatter

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from errors import ConfigError
from data import batches, windows

DATASET = 'imagenet2012'
TRAIN_SPLIT, EVAL_SPLIT = 'train', 'validation'
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EVAL_CROP_FRACTION = 0.875  # of the resized shorter side: 224 of 256
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
RESIZE_METHOD = tf.image.ResizeMethod.BICUBIC
WINDOW = 2 ** 13  # training images shuffled together (about 1 GB of ImageNet's JPEGs), on top of the file order
DTYPES = ('float32', 'bfloat16')

Batch = dict[str, np.ndarray]

tf.config.set_visible_devices([], 'GPU')  # JAX owns the accelerators; TensorFlow only reads files


def _builder(data_dir: str) -> tfds.core.DatasetBuilder:
  return tfds.builder(DATASET, data_dir=data_dir)


def is_prepared(data_dir: str) -> bool:
  return _builder(data_dir).is_prepared()


def check_prepared(data_dir: str) -> None:
  """Fails early, with the way to get the data, rather than deep inside tfds."""
  if not is_prepared(data_dir):
    raise ConfigError(
        f'no prepared tfds dataset {DATASET} in {data_dir}: put ILSVRC2012_img_train.tar and '
        f'ILSVRC2012_img_val.tar (from image-net.org) in {data_dir}/downloads/manual and run '
        f'"tfds build {DATASET} --data_dir={data_dir}", or use a :tiny config (generates a small set)')


def num_classes(data_dir: str) -> int:
  """The number of classes the prepared dataset was written with.

  Read from the features stored next to the data, not from the registered builder,
  whose info says 1000 whatever is on disk (a generated set has fewer).
  """
  check_prepared(data_dir)
  stored = tfds.builder_from_directory(_builder(data_dir).data_dir)
  return stored.info.features['label'].num_classes


def split_sizes(data_dir: str) -> dict[str, int]:
  check_prepared(data_dir)
  splits = _builder(data_dir).info.splits
  return {split: splits[split].num_examples for split in (TRAIN_SPLIT, EVAL_SPLIT)}


def _local_rows(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ConfigError(f'batch size {global_batch_size} must be a multiple of the process count ({process_count})')
  return global_batch_size // process_count


def _tf_dtype(dtype: str) -> tf.DType:
  if dtype not in DTYPES:
    raise ConfigError(f'image dtype {dtype!r}: choose one of {", ".join(DTYPES)}')
  return tf.dtypes.as_dtype(dtype)


def _normalized(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """Resized pixels (float, may overshoot 0..255) -> normalized channels in `dtype`."""
  image = tf.clip_by_value(image, 0.0, 255.0)
  return tf.cast((image - MEAN_RGB) / STDDEV_RGB, dtype)


def center_crop_window(shape: tf.Tensor) -> tf.Tensor:
  """[top, left, height, width] of the central square that evaluation sees, in the image's own pixels."""
  side = tf.cast(EVAL_CROP_FRACTION * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32), tf.int32)
  return tf.stack([(shape[0] - side) // 2, (shape[1] - side) // 2, side, side])


def random_crop_window(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """[top, left, height, width] of an Inception-style random crop of an image of `shape`, or the center crop.

  The sampler returns the whole image when all attempts fail, so a crop of the whole
  image is taken as a failure. min_object_covered is 0: the whole image is the only
  box, and any positive value would raise the smallest crop area above CROP_AREA_RANGE[0].
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=CROP_ASPECT_RATIO_RANGE, area_range=CROP_AREA_RANGE,
      max_attempts=CROP_ATTEMPTS, use_image_if_no_bounding_boxes=True)
  failed = tf.logical_and(size[0] == shape[0], size[1] == shape[1])
  return tf.where(failed, center_crop_window(shape), tf.stack([begin[0], begin[1], size[0], size[1]]))


def train_image(encoded: tf.Tensor, crop_seed: tf.Tensor, flip_seed: tf.Tensor, image_size: int,
                dtype: tf.DType = tf.float32) -> tf.Tensor:
  """A JPEG's random crop, decoded, resized to image_size (bicubic), maybe flipped, normalized."""
  window = random_crop_window(tf.image.extract_jpeg_shape(encoded), crop_seed)
  image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
  image = tf.image.resize(image, [image_size, image_size], method=RESIZE_METHOD)
  return _normalized(tf.image.stateless_random_flip_left_right(image, flip_seed), dtype)


def eval_image(encoded: tf.Tensor, image_size: int, dtype: tf.DType = tf.float32) -> tf.Tensor:
  """A JPEG decoded, resized (bicubic) so that its shorter side is image_size / EVAL_CROP_FRACTION (rounded),
  and its central image_size square, normalized."""
  image = tf.io.decode_jpeg(encoded, channels=3)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  scale = round(image_size / EVAL_CROP_FRACTION) / tf.cast(tf.minimum(height, width), tf.float32)
  resized = [tf.cast(tf.round(tf.cast(side, tf.float32) * scale), tf.int32) for side in (height, width)]
  image = tf.image.resize(image, resized, method=RESIZE_METHOD)
  top, left = (resized[0] - image_size) // 2, (resized[1] - image_size) // 2
  return _normalized(image[top:top + image_size, left:left + image_size], dtype)


def _train_example(example: dict[str, tf.Tensor], epoch_key: int, image_size: int,
                   dtype: tf.DType) -> dict[str, tf.Tensor]:
  """Seeded by (seed, epoch) and the example's identity (its file name) only: the same whatever the
  order or the process."""
  example_key = tf.strings.to_hash_bucket_fast(example['file_name'], np.iinfo(np.int64).max)
  seed = tf.stack([tf.constant(epoch_key, tf.int64), example_key])
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  return {'image': train_image(example['image'], crop_seed, flip_seed, image_size, dtype),
          'label': tf.cast(example['label'], tf.int32)}


def _eval_example(example: dict[str, tf.Tensor], image_size: int, dtype: tf.DType) -> dict[str, tf.Tensor]:
  return {'image': eval_image(example['image'], image_size, dtype), 'label': tf.cast(example['label'], tf.int32),
          'weight': tf.constant(1.0)}


def _records(builder: tfds.core.DatasetBuilder, split: tfds.typing.SplitArg, read_config: tfds.ReadConfig,
             shuffle_files: bool) -> tf.data.Dataset:
  """Examples with their images still JPEG bytes, so that they can be skipped or cropped before decoding."""
  return builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config,
                            decoders={'image': tfds.decode.SkipDecoding()})


def _deterministic(dataset: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options)


def _train_epoch(paths: list[str], ranges: list[tuple[int, int]], rows: int, image_size: int, dtype: tf.DType,
                 seed: int, epoch: int, first_example: int) -> tf.data.Dataset:
  """The batches of one epoch from its `first_example` on: files in an order drawn from (seed, epoch),
  every WINDOW examples shuffled from (seed, epoch, window), the epoch's last partial batch dropped.

  Counts are known (the split's file instructions), so the window that holds
  `first_example` is found by arithmetic and read from its file and record: the
  examples before it are never read, those before `first_example` in it never decoded.
  """
  order = windows.file_order(len(paths), seed, epoch)
  counts = [ranges[i][1] for i in order]
  window = first_example // WINDOW
  start = windows.Position(epoch, window, *windows.locate(counts, window * WINDOW))
  epoch_seed = batches.epoch_seed(seed, epoch)
  spec = {'image': tf.io.FixedLenFeature([], tf.string), 'label': tf.io.FixedLenFeature([], tf.int64),
          'file_name': tf.io.FixedLenFeature([], tf.string)}

  def shuffled(index, window):
    records = tf.random.experimental.stateless_shuffle(
        window['records'], seed=tf.stack([tf.constant(epoch_seed % 2 ** 63, tf.int64), index]))
    return tf.data.Dataset.from_tensor_slices(records)

  records = windows.epoch_windows([paths[i] for i in order], [ranges[i] for i in order], tf.data.TFRecordDataset,
                                  start, WINDOW).enumerate(start=window).flat_map(shuffled)
  examples = records.skip(first_example - window * WINDOW).take(
      sum(counts) // rows * rows - first_example).map(
          lambda record: _train_example(tf.io.parse_single_example(record, spec), epoch_seed, image_size, dtype),
          num_parallel_calls=tf.data.AUTOTUNE)
  return _deterministic(examples.batch(rows, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def train_batches(data_dir: str, global_batch_size: int, image_size: int, seed: int, start_step: int,
                  process_index: int, process_count: int, dtype: str = 'float32',
                  position=None) -> batches.Stream:
  """Endless augmented batches (image, label): this process's rows of each global batch of the train split.

  Each process reads its own slice of the split (tfds.split_for_jax_process, all
  slices cut to the same length), epoch after epoch; each epoch takes the slice's
  files in an order drawn from (seed, epoch) and shuffles every WINDOW consecutive
  examples from (seed, epoch, window) (see data/windows.py), and drops the examples
  that do not fill a last batch. The crop and flip of an example are seeded by (seed,
  epoch, its file name), so they do not depend on the order or on the other processes.
  So the batch of step s is a pure function of (seed, s, process_count), and resuming
  at `start_step` seeks there by arithmetic: whole epochs and windows are skipped
  unread, and the examples before the step in its window are read but not decoded.
  The step is the position (`position` is not needed and not used).
  """
  check_prepared(data_dir)
  tf_dtype = _tf_dtype(dtype)
  rows = _local_rows(global_batch_size, process_count)
  builder = _builder(data_dir)
  split = tfds.split_for_jax_process(TRAIN_SPLIT, process_index=process_index, process_count=process_count,
                                     drop_remainder=True)
  paths, ranges = windows.tfds_files(builder, split)
  slice_size = sum(take for _, take in ranges)
  steps_per_epoch = slice_size // rows
  if not steps_per_epoch:
    raise ConfigError(f'the {slice_size} training examples of a process cannot fill its {rows} rows of a batch '
                      f'of {global_batch_size}')
  first_epoch, first_step = divmod(start_step, steps_per_epoch)

  def epochs() -> Iterator[tuple[Batch, None]]:
    for epoch in itertools.count(first_epoch):
      first_example = first_step * rows if epoch == first_epoch else 0
      for batch in _train_epoch(paths, ranges, rows, image_size, tf_dtype, seed, epoch,
                                first_example).as_numpy_iterator():
        yield batch, None
  return batches.Stream(epochs())


def eval_batches(data_dir: str, global_batch_size: int, image_size: int, process_index: int, process_count: int,
                 max_examples: int = 0, dtype: str = 'float32') -> Iterator[Batch]:
  """One pass over the validation split (its first max_examples if > 0) in stored order, center-cropped.

  Global row r of a batch belongs to process r // rows (as data.batches.eval_batches);
  a process reads every example but decodes only its own. The last batch is padded
  with zero images of weight 0, so every process yields the same number of batches.
  """
  check_prepared(data_dir)
  tf_dtype = _tf_dtype(dtype)
  rows = _local_rows(global_batch_size, process_count)
  builder = _builder(data_dir)
  num_examples = builder.info.splits[EVAL_SPLIT].num_examples
  if max_examples > 0:
    num_examples = min(num_examples, max_examples)
  num_batches = -(-num_examples // global_batch_size)
  starts = range(process_index * rows, num_batches * global_batch_size, global_batch_size)
  num_mine = sum(min(rows, max(0, num_examples - start)) for start in starts)
  read_config = tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False)  # one file after another
  records = _records(builder, f'{EVAL_SPLIT}[:{num_examples}]', read_config, shuffle_files=False)
  mine = records.enumerate().filter(lambda i, _: i % global_batch_size // rows == process_index)
  examples = mine.map(lambda _, example: _eval_example(example, image_size, tf_dtype),
                      num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([image_size, image_size, 3], tf_dtype), 'label': tf.constant(0, tf.int32),
      'weight': tf.constant(0.0)}).repeat(num_batches * rows - num_mine)
  batched = examples.concatenate(padding).batch(rows).prefetch(tf.data.AUTOTUNE)
  return _deterministic(batched).as_numpy_iterator()
