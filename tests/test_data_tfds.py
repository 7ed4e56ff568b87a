"""A dataset built by TFDS itself (labels 0..N-1, keys 'image'/'label') read by tfds_name."""
import numpy as np
import pytest

import data_fixtures as fx
import tensorflow as tf
import tensorflow_datasets as tfds

from official_halonet.data import config as config_lib
from official_halonet.data import input_files
from official_halonet.data import pipeline

NUM_CLASSES = 6


class HalonetTinyPhotos(tfds.core.GeneratorBasedBuilder):
  """The real photos of data_fixtures as a TFDS image classification dataset (no download)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            'file_name': tfds.features.Text()}),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(), 'validation': self._generate_examples()}

  def _generate_examples(self):
    for label, (name, photo) in enumerate(fx.photos()):
      yield name, {'image': photo, 'label': label, 'file_name': f'{name}.jpg'}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  HalonetTinyPhotos(data_dir=data_dir).download_and_prepare()
  return data_dir


def test_tfds_built_dataset_eval_reads_every_example_once(tfds_dir):
  config = config_lib.DataConfig(
      tfds_name='halonet_tiny_photos', tfds_split='validation', tfds_data_dir=tfds_dir,
      is_training=False, global_batch_size=4, image_size=32, num_classes=NUM_CLASSES,
      label_offset=0)
  batches = fx.collect(pipeline.build_dataset(config))
  assert len(batches) == 2 and batches[0][0].shape == (4, 32, 32, 3)
  assert sorted(fx.eval_labels_seen(batches)) == list(range(NUM_CLASSES))


def test_tfds_imagenet_preset_keys_and_training(tfds_dir):
  config = config_lib.tfds_imagenet_config('train', is_training=True, global_batch_size=3,
                                           image_size=32, data_dir=tfds_dir)
  config = config.replace(tfds_name='halonet_tiny_photos', num_classes=NUM_CLASSES,
                          shuffle_buffer_size=4)
  assert input_files.field_keys(config) == ('image', 'label')
  (images, labels), = fx.collect(pipeline.build_dataset(config), max_batches=1)
  assert images.shape == (3, 32, 32, 3) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < NUM_CLASSES


def test_tfds_1_based_reading_is_caught(tfds_dir):
  config = config_lib.DataConfig(
      tfds_name='halonet_tiny_photos', tfds_split='validation', tfds_data_dir=tfds_dir,
      is_training=False, global_batch_size=6, image_size=32, num_classes=NUM_CLASSES,
      label_offset=1)
  with pytest.raises(tf.errors.InvalidArgumentError, match='Label out of range'):
    fx.collect(pipeline.build_dataset(config))


def test_tfds_split_slicing_and_unprepared_are_refused(tfds_dir, tmp_path):
  with pytest.raises(ValueError, match='whole splits'):
    input_files.resolve_tfds_files('halonet_tiny_photos', 'train[:50%]', tfds_dir)
  with pytest.raises((FileNotFoundError, ValueError), match='tfds build'):
    input_files.resolve_tfds_files('halonet_tiny_photos', 'train', str(tmp_path))
