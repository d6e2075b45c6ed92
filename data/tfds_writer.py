"""Writes a generated dataset where tfds' registered builder reads it as the real, prepared one."""

import os
import shutil
import tempfile
from typing import Callable

import tensorflow_datasets as tfds


class _Writer(tfds.dataset_builders.AdhocBuilder, skip_registration=True):
  # tfds 4.9.10 looks for a checksums file next to the builder's code before it prepares
  # anything, and that look-up imports `importlib_resources`, which tfds only declares for
  # Python < 3.9. There is nothing to download, so there are no checksums to find.
  url_infos = None


def write(data_dir: str, dataset: str, version: str, features: tfds.features.FeatureConnector, description: str,
          split_datasets: dict[str, list], is_prepared: Callable[[], bool]) -> None:
  """Writes `split_datasets` ({split: [(key, example)]}) as tfds `dataset` ('name' or 'name/config') `version`.

  tfds' own writer stores them under the registered builder's name, config and
  version, so `tfds.builder(dataset, data_dir=data_dir)` reads them as it would the
  real data: same file names and features, and a dataset_info.json with the split
  sizes (the builder only reads the files; it never compares them with its download
  sources). The dataset is written into a temporary data_dir and only its version
  folder is renamed into place, so a crash or a second process never leaves a
  half-written dataset that looks prepared; `is_prepared` tells whether another
  process finished first.
  """
  name, _, config = dataset.partition('/')
  final = os.path.join(data_dir, *dataset.split('/'), version)
  os.makedirs(os.path.dirname(final), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{name}-', dir=data_dir)
  try:
    writer = _Writer(name=name, config=config or None, version=version, data_dir=staging, features=features,
                     description=description, split_datasets=split_datasets)
    tfds.disable_progress_bar()  # a few seconds of writing: progress bars would only clutter the log
    writer.download_and_prepare()
    try:
      os.rename(writer.data_dir, final)
    except OSError:  # another process finished first
      if not is_prepared():
        raise
  finally:
    shutil.rmtree(staging)
