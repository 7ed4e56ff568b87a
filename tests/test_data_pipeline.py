"""Training and eval pipelines on tiny TFRecords of real photos, in both label conventions."""
import numpy as np
import pytest

import data_fixtures as fx
import tensorflow as tf

from official_halonet.data import config as config_lib
from official_halonet.data import pipeline
from official_halonet.data import validate

IMAGE_SIZE = 32
NUM_EXAMPLES = 11  # Not a multiple of the batch size: the last eval batch is partial.


@pytest.fixture(scope='module')
def imagenet_shards(tmp_path_factory):
  """ImageNet-converter convention: example k stored with label k + 1 (1..11), 3 shards."""
  directory = str(tmp_path_factory.mktemp('imagenet'))
  fx.write_records(directory, 'validation', fx.photo_items(NUM_EXAMPLES, 1), 3)
  fx.write_records(directory, 'train', fx.photo_items(NUM_EXAMPLES, 1), 2)
  return directory


@pytest.fixture(scope='module')
def tfds_shards(tmp_path_factory):
  """TFDS layout ('image', 'label') and convention (0-based labels)."""
  directory = str(tmp_path_factory.mktemp('tfds'))
  fx.write_records(directory, 'validation', fx.photo_items(NUM_EXAMPLES, 0), 2,
                   tfds_layout=True)
  return directory


def _eval_config(directory, batch=4, label_offset=1, **kw):
  return config_lib.DataConfig(
      input_path=f'{directory}/validation-*', is_training=False, global_batch_size=batch,
      image_size=IMAGE_SIZE, num_classes=NUM_EXAMPLES, label_offset=label_offset, **kw)


def test_eval_imagenet_convention_every_example_once_in_a_fixed_order(imagenet_shards):
  config = _eval_config(imagenet_shards)
  batches = fx.collect(pipeline.build_dataset(config))
  assert len(batches) == 3  # ceil(11 / 4)
  for images, target in batches:
    assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.float32
    assert target['labels'].dtype == np.int32 and target['labels'].shape == (4,)
    assert target['mask'].dtype == np.float32
  masks = np.concatenate([t['mask'] for _, t in batches])
  np.testing.assert_array_equal(masks, [1] * NUM_EXAMPLES + [0])
  seen = fx.eval_labels_seen(batches)
  # Stored labels 1..11 with label_offset 1 -> class ids 0..10, each exactly once.
  assert sorted(seen) == list(range(NUM_EXAMPLES))
  # Padding is zeros, real images are normalised photos (not constant).
  assert np.all(batches[-1][0][3] == 0)
  assert all(np.std(img) > 0.1 for img in batches[0][0])
  # A second pass gives the same examples in the same order, bit for bit.
  again = fx.collect(pipeline.build_dataset(config))
  assert fx.eval_labels_seen(again) == seen
  for (a, _), (b, _) in zip(batches, again):
    np.testing.assert_array_equal(a, b)


def test_eval_tfds_convention_and_keys(tfds_shards):
  config = _eval_config(tfds_shards, batch=5, label_offset=0,
                        image_field_key='image', label_field_key='label')
  batches = fx.collect(pipeline.build_dataset(config))
  assert [b[0].shape[0] for b in batches] == [5, 5, 5]
  assert sorted(fx.eval_labels_seen(batches)) == list(range(NUM_EXAMPLES))


def test_same_photos_same_eval_images_in_both_conventions(imagenet_shards, tfds_shards):
  a = fx.collect(pipeline.build_dataset(_eval_config(imagenet_shards, batch=NUM_EXAMPLES)))
  b = fx.collect(pipeline.build_dataset(_eval_config(
      tfds_shards, batch=NUM_EXAMPLES, label_offset=0, image_field_key='image',
      label_field_key='label')))
  by_label_a = dict(zip(a[0][1]['labels'], a[0][0]))
  by_label_b = dict(zip(b[0][1]['labels'], b[0][0]))
  for label in range(NUM_EXAMPLES):
    np.testing.assert_array_equal(by_label_a[label], by_label_b[label])


def test_training_batches_shapes_labels_and_repeat(imagenet_shards):
  config = config_lib.DataConfig(
      input_path=f'{imagenet_shards}/train-*', is_training=True, global_batch_size=4,
      image_size=IMAGE_SIZE, num_classes=NUM_EXAMPLES, label_offset=1, shuffle_buffer_size=8,
      seed=7, cycle_length=2)  # Two open shards: one epoch (11) precedes the next.
  dataset = pipeline.build_dataset(config)
  assert dataset.element_spec[0].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)  # Static batch.
  assert dataset.element_spec[1].shape == (4,)
  batches = fx.collect(dataset, max_batches=6)  # 24 > 11 examples: the data repeats.
  labels = np.concatenate([l for _, l in batches])
  assert labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < NUM_EXAMPLES
  assert set(labels.tolist()) == set(range(NUM_EXAMPLES))
  images = np.concatenate([i for i, _ in batches])
  assert images.dtype == np.float32 and np.isfinite(images).all()
  # Random-resized crops: the same photo comes out differently on different visits.
  first = {}
  differs = False
  for image, label in zip(images, labels):
    if label in first:
      differs |= not np.allclose(first[label], image)
    else:
      first[label] = image
  assert differs


def test_per_host_sharding_splits_eval_exactly_and_pads_to_equal_steps(imagenet_shards):
  num_hosts, batch = 2, 2
  counts = [r.num_records for r in validate.validate_shards(
      sorted(tf.io.gfile.glob(f'{imagenet_shards}/validation-*')), 1, NUM_EXAMPLES)]
  steps = validate.eval_num_batches(counts, num_hosts, batch)
  seen_per_host = []
  for host in range(num_hosts):
    context = tf.distribute.InputContext(num_input_pipelines=num_hosts,
                                         input_pipeline_id=host, num_replicas_in_sync=num_hosts)
    config = _eval_config(imagenet_shards, batch=batch * num_hosts, eval_num_batches=steps)
    batches = fx.collect(pipeline.build_dataset(config, context))
    assert len(batches) == steps
    assert all(b[0].shape[0] == batch for b in batches)
    seen_per_host.append(fx.eval_labels_seen(batches))
  assert not set(seen_per_host[0]) & set(seen_per_host[1])
  assert sorted(seen_per_host[0] + seen_per_host[1]) == list(range(NUM_EXAMPLES))


def test_eval_num_batches_too_small_stops_instead_of_dropping(imagenet_shards):
  config = _eval_config(imagenet_shards, batch=4, eval_num_batches=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match='raise eval_num_batches'):
    fx.collect(pipeline.build_dataset(config))


def test_imagenet21k_multilabel_gives_multi_hot(tmp_path):
  num_classes = 40
  pics = fx.photos()
  stored = [[3], [0, 39], [5, 6, 7], [12, 12]]
  items = [(fx.encode(pics[k][1]), labels) for k, labels in enumerate(stored)]
  fx.write_records(str(tmp_path), 'validation', items, 1)  # One shard: rows in stored order.
  config = config_lib.imagenet21k_config(
      f'{tmp_path}/validation-*', is_training=False, global_batch_size=4,
      num_classes=num_classes, multilabel=True, image_size=IMAGE_SIZE)
  (images, target), = fx.collect(pipeline.build_dataset(config))
  assert target['labels'].shape == (4, num_classes) and target['labels'].dtype == np.float32
  expected = np.zeros((4, num_classes), np.float32)
  for row, labels in enumerate(stored):
    expected[row, labels] = 1.0
  np.testing.assert_array_equal(target['labels'], expected)


def test_imagenet21k_single_label_config(tmp_path):
  fx.write_records(str(tmp_path), 'train', [(fx.encode(p), 21842) for _, p in fx.photos()], 1)
  config = config_lib.imagenet21k_config(f'{tmp_path}/train-*', is_training=True,
                                         global_batch_size=2, image_size=IMAGE_SIZE,
                                         shuffle_buffer_size=4)
  (_, labels), = fx.collect(pipeline.build_dataset(config), max_batches=1)
  np.testing.assert_array_equal(labels, [21842, 21842])


def test_mixup_cutmix_gives_soft_labels(imagenet_shards):
  config = config_lib.DataConfig(
      input_path=f'{imagenet_shards}/train-*', is_training=True, global_batch_size=4,
      image_size=IMAGE_SIZE, num_classes=NUM_EXAMPLES, label_offset=1, mixup_alpha=0.8,
      cutmix_alpha=1.0, mixup_label_smoothing=0.1, shuffle_buffer_size=4)
  (images, labels), = fx.collect(pipeline.build_dataset(config), max_batches=1)
  assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert labels.shape == (4, NUM_EXAMPLES) and labels.dtype == np.float32
  np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)


def test_randaugment_with_the_h7_magnitude_runs(imagenet_shards):
  config = config_lib.DataConfig(
      input_path=f'{imagenet_shards}/train-*', is_training=True, global_batch_size=4,
      image_size=IMAGE_SIZE, num_classes=NUM_EXAMPLES, label_offset=1, randaug_magnitude=31,
      shuffle_buffer_size=4)
  (images, labels), = fx.collect(pipeline.build_dataset(config), max_batches=1)
  assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(images).all()


@pytest.mark.parametrize('change, message', [
    (dict(label_offset=None), 'label_offset must be set explicitly'),
    (dict(num_classes=0), 'num_classes must be > 0'),
    (dict(global_batch_size=0), 'global_batch_size'),
    (dict(on_bad_image='ignore'), 'on_bad_image'),
    (dict(is_multilabel=True, mixup_alpha=0.2), 'single-label'),
])
def test_config_errors_name_the_field(imagenet_shards, change, message):
  config = _eval_config(imagenet_shards).replace(**change)
  with pytest.raises(ValueError, match=message):
    pipeline.build_dataset(config)


def test_missing_files_are_reported(tmp_path):
  config = _eval_config(str(tmp_path))
  with pytest.raises(ValueError, match='does not match any files'):
    pipeline.build_dataset(config)


def test_cached_eval_gives_the_same_pass_twice(imagenet_shards):
  dataset = pipeline.build_dataset(_eval_config(imagenet_shards, cache=True))
  first, second = fx.collect(dataset), fx.collect(dataset)  # The second pass reads the cache.
  assert fx.eval_labels_seen(first) == fx.eval_labels_seen(second)
  assert sorted(fx.eval_labels_seen(first)) == list(range(NUM_EXAMPLES))
  for (a, _), (b, _) in zip(first, second):
    np.testing.assert_array_equal(a, b)


def test_distribute_datasets_from_function(imagenet_shards):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  config = _eval_config(imagenet_shards, batch=4)
  dataset = strategy.distribute_datasets_from_function(
      lambda context: pipeline.build_dataset(config, context))
  seen = []
  for images, target in dataset:
    assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    seen.extend(int(l) for l, m in zip(target['labels'].numpy(), target['mask'].numpy()) if m)
  assert sorted(seen) == list(range(NUM_EXAMPLES))


@pytest.mark.parametrize('kind, extra', [
    ('train', {}), ('eval', {}), ('train', {'mixup_alpha': 0.8}),
    ('train', {'dtype': 'bfloat16'}), ('eval', {'is_multilabel': True})])
def test_element_spec_without_files_equals_the_built_dataset(imagenet_shards, kind, extra):
  """pipeline.element_spec (what tpu_check traces with) is the real pipeline's batch structure."""
  split = 'train' if kind == 'train' else 'validation'
  config = config_lib.DataConfig(
      input_path=f'{imagenet_shards}/{split}-*', is_training=kind == 'train', global_batch_size=4,
      image_size=IMAGE_SIZE, num_classes=NUM_EXAMPLES, label_offset=1, shuffle_buffer_size=4,
      **extra)
  assert pipeline.element_spec(config, 4) == pipeline.build_dataset(config).element_spec
