"""Bad input: truncated shards, undecodable images, odd encodings, labels out of range.

Each case is either decoded correctly or stops with a message naming the shard and the record
index, in both the eval and the training pipeline, and never hangs.
"""
import re

import numpy as np
import pytest

import data_fixtures as fx
import tensorflow as tf

from official_halonet.data import config as config_lib
from official_halonet.data import pipeline
from official_halonet.data import validate

SIZE = 32


def _config(path, is_training, num_classes=8, label_offset=1, batch=3, **kw):
  return config_lib.DataConfig(
      input_path=path, is_training=is_training, global_batch_size=batch, image_size=SIZE,
      num_classes=num_classes, label_offset=label_offset, shuffle_buffer_size=4, **kw)


def _names_record(message, path, index):
  """The pipeline's messages print each tensor in brackets: [path] ... [index]."""
  return (path in message) and re.search(rf'record index\]? \[{index}\]', message)


def _shard_with(tmp_path, bad_bytes, position=2, count=5, name='data'):
  """A shard of `count` good JPEG photos, with record `position` replaced by `bad_bytes`."""
  pics = fx.photos()
  items = [(fx.encode(pics[k % len(pics)][1]), 1 + k % 3) for k in range(count)]
  items[position] = (bad_bytes, items[position][1])
  return fx.write_records(str(tmp_path / name), 'train', items, 1)[0]


def _drain(dataset, max_batches=20):
  for _ in dataset.take(max_batches):
    pass


@pytest.mark.parametrize('is_training', [False, True])
def test_truncated_shard_names_shard_and_first_unreadable_record(tmp_path, is_training):
  pics = fx.photos()
  path = fx.write_records(str(tmp_path), 'train',
                          [(fx.encode(p), 1) for _, p in pics[:5]], 1)[0]
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:-40])  # Cuts into the last record (index 4).
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _drain(pipeline.build_dataset(_config(path, is_training)))
  message = error.value.message
  assert 'Truncated or corrupt TFRecord shard' in message
  assert _names_record(message, path, 4), message


def test_corrupt_record_in_the_middle_is_caught(tmp_path):
  pics = fx.photos()
  path = fx.write_records(str(tmp_path), 'train', [(fx.encode(p), 1) for _, p in pics[:4]], 1)[0]
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0xFF  # Flips a byte inside record 1 or 2: its CRC no longer matches.
  with open(path, 'wb') as f:
    f.write(bytes(data))
  with pytest.raises(tf.errors.InvalidArgumentError, match='Truncated or corrupt') as error:
    _drain(pipeline.build_dataset(_config(path, False)))
  assert path in error.value.message


@pytest.mark.parametrize('is_training', [False, True])
@pytest.mark.parametrize('kind', ['truncated_jpeg', 'not_an_image', 'empty'])
def test_undecodable_image_names_shard_and_record(tmp_path, is_training, kind):
  good = fx.encode(fx.photos()[0][1])
  bad = {'truncated_jpeg': good[:len(good) // 2], 'not_an_image': b'<html>404</html>',
         'empty': b''}[kind]
  path = _shard_with(tmp_path, bad, position=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match='Could not decode the image') as e:
    _drain(pipeline.build_dataset(_config(path, is_training)))
  assert _names_record(e.value.message, path, 2), e.value.message


def test_undecodable_image_can_be_skipped_and_is_reported(tmp_path, capfd):
  good = fx.encode(fx.photos()[0][1])
  path = _shard_with(tmp_path, good[:100], position=1, count=4)
  config = _config(path, False, batch=4, on_bad_image='skip')
  batches = fx.collect(pipeline.build_dataset(config))
  masks = np.concatenate([t['mask'] for _, t in batches])
  assert masks.sum() == 3  # Records 0, 2, 3.
  err = capfd.readouterr().err
  assert 'skipping an undecodable image' in err and path in err
  assert re.search(r'record index 1\b', err), err


def test_without_the_guard_the_error_is_tensorflows_own(tmp_path):
  good = fx.encode(fx.photos()[0][1])
  path = _shard_with(tmp_path, good[:200], position=0)
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _drain(pipeline.build_dataset(_config(path, False, guard_decode=False)))
  assert 'Could not decode the image' not in error.value.message


def _eval_images(tmp_path, encoded, name):
  path = fx.write_records(str(tmp_path / name), 'validation', [(encoded, 1)], 1)[0]
  (images, target), = fx.collect(pipeline.build_dataset(_config(path, False, batch=1)))
  return images[0], target


@pytest.mark.parametrize('variant', ['png', 'cmyk', 'gray'])
def test_png_cmyk_and_grayscale_images_decode_to_rgb(tmp_path, variant):
  photo = fx.photos()[1][1]
  if variant == 'gray':
    photo = np.repeat(fx.gray_photo()[..., None], 3, axis=-1)
  reference, _ = _eval_images(tmp_path, fx.encode(photo, 'PNG'), 'reference')
  encoded = {'png': fx.encode(photo, 'PNG'),
             'cmyk': fx.encode(photo, 'JPEG', mode='CMYK'),
             'gray': fx.encode(photo, 'JPEG', mode='L')}[variant]
  image, target = _eval_images(tmp_path, encoded, variant)
  assert image.shape == (SIZE, SIZE, 3)
  assert target['mask'][0] == 1.0
  # Same photo, lossy or not: the normalised images agree to JPEG error (std units).
  assert np.mean(np.abs(image - reference)) < 0.1
  if variant == 'gray':  # R = G = B before normalisation: channels are affine in each other.
    stddev, mean = np.array([58.395, 57.12, 57.375]), np.array([123.675, 116.28, 103.53])
    pixels = image * stddev + mean
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 1], atol=1e-3)


@pytest.mark.parametrize('variant', ['png', 'cmyk', 'gray'])
def test_odd_encodings_train(tmp_path, variant):
  photo = fx.photos()[2][1]
  encoded = {'png': fx.encode(photo, 'PNG'), 'cmyk': fx.encode(photo, 'JPEG', mode='CMYK'),
             'gray': fx.encode(fx.gray_photo(), 'JPEG')}[variant]
  path = _shard_with(tmp_path, encoded, position=0, count=3)
  (images, labels), = fx.collect(pipeline.build_dataset(_config(path, True)), max_batches=1)
  assert images.shape == (3, SIZE, SIZE, 3) and np.isfinite(images).all()


@pytest.mark.parametrize('stored, label_offset, num_classes', [
    (0, 1, 3),    # ImageNet "background" 0 read with label_offset=1.
    (4, 1, 3),    # One past the last class.
    (3, 0, 3),    # 1-based data read as 0-based.
])
@pytest.mark.parametrize('is_training', [False, True])
def test_label_out_of_range_names_shard_record_and_label(tmp_path, stored, label_offset,
                                                         num_classes, is_training):
  pics = fx.photos()
  items = [(fx.encode(pics[k][1]), label_offset) for k in range(4)]
  items[3] = (items[3][0], stored)
  path = fx.write_records(str(tmp_path), 'train', items, 1)[0]
  config = _config(path, is_training, num_classes=num_classes, label_offset=label_offset)
  with pytest.raises(tf.errors.InvalidArgumentError, match='Label out of range') as error:
    _drain(pipeline.build_dataset(config))
  message = error.value.message
  assert _names_record(message, path, 3), message
  assert f'[{stored}]' in message
  assert f'[{label_offset}, {label_offset + num_classes})' in message


def test_missing_label_is_reported(tmp_path):
  from official_halonet.data import records
  example = records.make_example(fx.encode(fx.photos()[0][1]), 1, label_key='image/other')
  path = str(tmp_path / 'train-00000-of-00001')
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(example.SerializeToString())
  with pytest.raises(tf.errors.InvalidArgumentError, match='Label out of range') as error:
    _drain(pipeline.build_dataset(_config(path, False, batch=1)))
  assert '[-1]' in error.value.message and 'no label feature' in error.value.message


def test_multilabel_out_of_range_is_reported(tmp_path):
  pics = fx.photos()
  items = [(fx.encode(pics[0][1]), [0, 2]), (fx.encode(pics[1][1]), [1, 5])]
  path = fx.write_records(str(tmp_path), 'train', items, 1)[0]
  config = _config(path, False, num_classes=5, label_offset=0, batch=2, is_multilabel=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match='Label out of range') as error:
    _drain(pipeline.build_dataset(config))
  assert _names_record(error.value.message, path, 1)


def test_validate_reports_every_problem_with_shard_and_record(tmp_path, capsys):
  good = fx.encode(fx.photos()[0][1])
  bad_image = _shard_with(tmp_path, good[:300], position=3, name='a')
  pics = fx.photos()
  bad_label = fx.write_records(str(tmp_path / 'b'), 'train',
                               [(fx.encode(pics[0][1]), 1), (fx.encode(pics[1][1]), 0)], 1)[0]
  truncated = fx.write_records(str(tmp_path / 'c'), 'train',
                               [(fx.encode(p), 1) for _, p in pics[:3]], 1)[0]
  data = open(truncated, 'rb').read()
  with open(truncated, 'wb') as f:
    f.write(data[:-10])

  reports = validate.validate_shards([bad_image, bad_label, truncated], label_offset=1,
                                     num_classes=3, decode_images=True)
  assert [r.num_records for r in reports] == [5, 2, 2]
  assert reports[0].problems[0][0] == 3 and 'does not decode' in reports[0].problems[0][1]
  assert reports[1].problems[0][0] == 1 and 'label 0 outside [1, 4)' in reports[1].problems[0][1]
  assert reports[2].truncated and reports[2].problems[0][0] == 2
  with pytest.raises(validate.DataValidationError) as error:
    validate.raise_for_problems(reports)
  for path, index in [(bad_image, 3), (bad_label, 1), (truncated, 2)]:
    assert f'{path}: record {index}:' in str(error.value)

  status = validate.main([f'--input_path={tmp_path}/*/train-*', '--label_offset=1',
                          '--num_classes=3', '--decode_images'])
  out = capsys.readouterr().out
  assert status == 1 and 'FAILED: 3 problem(s)' in out
  assert f'{truncated}: record 2: truncated' in out


def test_validate_passes_clean_data_and_counts_for_eval_steps(tmp_path, capsys):
  paths = fx.write_records(str(tmp_path), 'validation', fx.photo_items(7, 1), 3)
  assert validate.main([f'--input_path={tmp_path}/validation-*', '--label_offset=1',
                        '--num_classes=7', '--decode_images']) == 0
  out = capsys.readouterr().out
  assert '3 shards, 7 records, stored labels 1..7' in out and out.rstrip().endswith('OK')
  counts = [r.num_records for r in validate.validate_shards(paths, 1, 7)]
  assert counts == [3, 2, 2]
  assert validate.eval_num_batches(counts, 1, 4) == 2
  assert validate.eval_num_batches(counts, 3, 2) == 2   # File sharding: 3, 2, 2 records.
  assert validate.eval_num_batches(counts, 4, 1) == 2   # Record sharding: 2, 2, 2, 1 records.


def test_eval_check_finds_labels_truncation_and_sampled_images_with_their_records(tmp_path):
  from official_halonet.data import errors
  good = fx.encode(fx.photos()[0][1])
  pics = fx.photos()
  truncated = fx.write_records(str(tmp_path / 'b'), 'validation', [(good, 2)] * 4, 1)[0]
  # Record 4 of shard a: label 9; shard b loses its last bytes; shard c: record 0 undecodable.
  items = [(fx.encode(pics[k % 3][1]), 1 + k % 3) for k in range(6)]
  items[4] = (items[4][0], 9)
  bad_label = fx.write_records(str(tmp_path / 'a'), 'validation', items, 1)[0]
  with open(truncated, 'r+b') as f:
    f.truncate(len(open(truncated, 'rb').read()) - 30)
  undecodable = _shard_with(tmp_path, good[:200], position=0, count=3, name='c')
  config = _config(f'{tmp_path}/a/*,{tmp_path}/b/*,{undecodable}', False)
  with pytest.raises(errors.DataError) as error:
    validate.check_eval_data(config)
  found = {(p.shard, p.record): p.reason for p in error.value.problems}
  assert set(found) == {(bad_label, 4), (truncated, 3), (undecodable, 0)}, found
  assert found[(bad_label, 4)].startswith('label 9 outside [1, 9)')
  assert 'truncated' in found[(truncated, 3)] and 'does not decode' in found[(undecodable, 0)]
  assert error.value.summary().count('\n') == 0


def test_eval_check_passes_clean_data_and_counts_it(tmp_path):
  fx.write_records(str(tmp_path), 'validation', fx.photo_items(7, 1), 3)
  summary = validate.check_eval_data(_config(f'{tmp_path}/validation-*', False, num_classes=7),
                                     decode_sample=4)
  assert (summary.num_shards, summary.num_records, summary.num_decoded) == (3, 7, 6)


def test_tensorflow_error_from_the_pipeline_becomes_shard_record_and_reason(tmp_path):
  from official_halonet.data import errors
  items = [(fx.encode(fx.photos()[k][1]), 1) for k in range(4)]
  items[2] = (items[2][0], 0)
  path = fx.write_records(str(tmp_path), 'train', items, 1)[0]
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _drain(pipeline.build_dataset(_config(path, False)))
  problem, = errors.from_tf_error(error.value).problems
  assert (problem.shard, problem.record) == (path, 2)
  assert problem.reason.startswith('Label out of range') and '\n' not in problem.reason
  assert errors.from_tf_error(tf.errors.InvalidArgumentError(None, None, 'x')) is None


def _still_and_reference(variant):
  """(encoded bytes of `variant`, PNG bytes of the pixels it must decode to)."""
  photo = fx.photos()[3][1]
  if variant == 'gif':  # Two frames: only the first is read.
    encoded = fx.animation([photo, 255 - photo], 'GIF')
    return encoded, fx.encode(fx.first_frame_pixels(encoded), 'PNG')
  if variant == 'webp':
    return fx.encode(photo, 'WEBP'), fx.encode(photo, 'PNG')
  if variant == 'webp_alpha':  # The alpha channel is dropped, as for PNG.
    alpha = np.full(photo.shape[:2] + (1,), 200, np.uint8)
    return fx.encode(np.concatenate([photo, alpha], -1), 'WEBP'), fx.encode(photo, 'PNG')
  tiny = fx.encode(photo[20:21, 30:31], 'JPEG')  # 1x1: Model Garden's crop of it was empty.
  return tiny, fx.encode(fx.first_frame_pixels(tiny), 'PNG')


@pytest.mark.parametrize('variant', ['gif', 'webp', 'webp_alpha', 'tiny_jpeg'])
def test_gif_webp_and_1x1_jpeg_decode_alike_in_eval_training_and_validate(tmp_path, variant):
  encoded, reference_png = _still_and_reference(variant)
  reference, _ = _eval_images(tmp_path, reference_png, 'reference')
  image, target = _eval_images(tmp_path, encoded, variant)
  assert target['mask'][0] == 1.0
  # Both decode to the same uint8 pixels and then run the same float ops.
  np.testing.assert_array_equal(image, reference)
  if variant == 'tiny_jpeg':  # A 1x1 image becomes an image of its one colour.
    pixel = fx.first_frame_pixels(encoded)[0, 0].astype(np.float32)
    mean, stddev = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    # Bilinear resizing a constant image: sums of 4 weights x 255 in float32, then normalised.
    tolerance = 4 * 255 * np.finfo(np.float32).eps / stddev.min()
    np.testing.assert_allclose(image, np.broadcast_to((pixel - mean) / stddev, image.shape),
                               atol=tolerance, rtol=0)

  path = _shard_with(tmp_path, encoded, position=1, count=3, name=f'train_{variant}')
  (images, _), = fx.collect(pipeline.build_dataset(_config(path, True)), max_batches=1)
  assert images.shape == (3, SIZE, SIZE, 3) and np.isfinite(images).all()
  report, = validate.validate_shards([path], label_offset=1, num_classes=8, decode_images=True)
  assert report.ok and report.num_records == 3, report.describe()


@pytest.mark.parametrize('is_training', [False, True])
def test_animated_webp_is_refused_with_its_reason_in_training_eval_and_validate(tmp_path,
                                                                               is_training):
  # TensorFlow's WebP decoder aborts the process on this file; it must never be handed it.
  photo = fx.photos()[0][1]
  path = _shard_with(tmp_path, fx.animation([photo, 255 - photo], 'WEBP'), position=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match='Could not decode the image') as e:
    _drain(pipeline.build_dataset(_config(path, is_training)))
  assert _names_record(e.value.message, path, 2), e.value.message
  assert 'an animated WebP, which is not supported' in e.value.message
  report, = validate.validate_shards([path], label_offset=1, num_classes=8, decode_images=True)
  assert [index for index, _ in report.problems] == [2]
  assert 'animated WebP' in report.problems[0][1]
