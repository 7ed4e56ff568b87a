"""Where the input records come from: the TFRecord files a `DataConfig` names, and the feature
keys of their images and labels.

  resolve_input_files(config) -> [path]   input_path's patterns, each matched and sorted (a stable
                                           order), or with tfds_name the prepared TFDS split's
                                           files; a missing file raises FileNotFoundError
  resolve_tfds_files(name, split, data_dir) -> [path]   a prepared TFDS dataset's whole split
                                           (ValueError for a sliced or unknown split or a format
                                           other than TFRecord, FileNotFoundError if unprepared)
  field_keys(config) -> (image key, label key)   the config's, or TFDS's for tfds_name defaults

Nothing is read from the files here: only their names and existence.
"""
import os
from typing import List, Tuple

import tensorflow as tf

from official.core import input_reader

from official_halonet.data import config as config_lib
from official_halonet.data import records


def resolve_input_files(config: config_lib.DataConfig) -> List[str]:
  """The TFRecord shards `config` reads, in a stable (sorted per pattern) order.

  `input_path` may be a pattern, a comma-separated list of patterns or a list of them (Model
  Garden's `match_files`). With `tfds_name`, the split's TFRecord files in the prepared TFDS
  dataset (`tfds build` / `download_and_prepare` must have run; only whole splits, e.g.
  'train', 'validation').
  """
  if config.tfds_name:
    return resolve_tfds_files(config.tfds_name, config.tfds_split, config.tfds_data_dir)
  patterns = config.input_path
  files = []
  for pattern in ([patterns] if isinstance(patterns, str) else list(patterns)):
    files.extend(sorted(input_reader.match_files(pattern)))
  missing = [f for f in files if not tf.io.gfile.exists(f)]
  if missing:
    raise FileNotFoundError(f'Input file(s) not found: {missing[:5]}')
  return files


def resolve_tfds_files(name: str, split: str, data_dir: str = '') -> List[str]:
  """TFRecord file paths of split `split` of the prepared TFDS dataset `name`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if any(c in split for c in '[]%+'):
    raise ValueError(f'tfds_split {split!r}: only whole splits are supported (no slicing), '
                     'so records can be named by shard and index.')
  builder = tfds.builder(name, data_dir=data_dir or None)
  file_format = str(getattr(builder.info, 'file_format', 'tfrecord') or 'tfrecord')
  if 'tfrecord' not in file_format.lower():
    raise ValueError(f'TFDS dataset {name!r} is stored as {file_format}; only TFRecord is read.')
  if split not in builder.info.splits:
    raise ValueError(f'TFDS dataset {name!r} in {builder.data_dir} has no split {split!r} '
                     f'(has {list(builder.info.splits.keys())}). Prepare it with `tfds build`.')
  files = [os.fspath(p) for p in builder.info.splits[split].filepaths]
  missing = [f for f in files if not tf.io.gfile.exists(f)]
  if not files or missing:
    raise FileNotFoundError(f'TFDS dataset {name!r} split {split!r} is not prepared in '
                            f'{builder.data_dir} (missing {missing[:3]}); run `tfds build`.')
  return files


def field_keys(config: config_lib.DataConfig) -> Tuple[str, str]:
  """(image key, label key): the config's, or TFDS's 'image'/'label' for tfds_name defaults."""
  image_key, label_key = config.image_field_key, config.label_field_key
  if config.tfds_name:
    if image_key == records.IMAGE_KEY:
      image_key = records.TFDS_IMAGE_KEY
    if label_key == records.LABEL_KEY:
      label_key = records.TFDS_LABEL_KEY
  return image_key, label_key
