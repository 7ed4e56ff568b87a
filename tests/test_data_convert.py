"""The folder / NumPy -> TFRecord converter and the record format, read back by the pipeline."""
import json
import os

import numpy as np
import pytest

import console_check
import data_fixtures as fx
import tensorflow as tf

from official_halonet.data import config as config_lib
from official_halonet.data import convert
from official_halonet.data import pipeline
from official_halonet.data import records


def _image_folder(root):
  """Three classes of real photos in JPEG, PNG, CMYK and grayscale files, plus junk."""
  pics = dict(fx.photos())
  files = {
      'n01_cat': [('chelsea.jpg', fx.encode(pics['chelsea'])),
                  ('chelsea_cmyk.JPEG', fx.encode(pics['chelsea'], mode='CMYK'))],
      'n02_drink': [('coffee.png', fx.encode(pics['coffee'], 'PNG')),
                    ('coffee.jpeg', fx.encode(pics['coffee']))],
      'n03_scene': [('china.jpg', fx.encode(pics['china'])),
                    ('camera.jpg', fx.encode(fx.gray_photo())),
                    ('flower.bmp', fx.encode(pics['flower'], 'BMP'))],
  }
  for cls, items in files.items():
    os.makedirs(os.path.join(root, cls))
    for name, data in items:
      with open(os.path.join(root, cls, name), 'wb') as f:
        f.write(data)
  with open(os.path.join(root, 'n01_cat', '.DS_Store'), 'wb') as f:
    f.write(b'\0junk')
  return {cls: len(items) for cls, items in files.items()}


def _raw_examples(paths):
  out = []
  for path in paths:
    for record in tf.data.TFRecordDataset(path):
      out.append(tf.train.Example.FromString(record.numpy()).features.feature)
  return out


def test_folder_converts_to_imagenet_format_and_reads_back(tmp_path):
  counts = _image_folder(str(tmp_path / 'in'))
  out_dir = str(tmp_path / 'out')
  # As the README runs it; its console holds its own lines only (no log record).
  lines = console_check.run_quietly([
      '-m', 'official_halonet.data.convert', f'--input_dir={tmp_path}/in',
      f'--output_dir={out_dir}', '--split=validation', '--num_shards=3', '--label_offset=1'])
  assert lines[0].startswith('Wrote 7 examples to 3 shards')
  assert lines[1] == 'Ignored 1 non-image file(s).'
  bar = [line for line in lines[2:] if line]  # the progress bar on stderr, redrawn after '\r'
  assert bar and all(' images ' in line for line in bar) and '7/7 images' in bar[-1]
  shard_names = sorted(os.listdir(out_dir))
  assert shard_names == ['label_map.json'] + [f'validation-0000{i}-of-00003' for i in range(3)]

  label_map = records.LabelMap.read(out_dir)
  assert label_map.classes == ['n01_cat', 'n02_drink', 'n03_scene']
  assert label_map.label_offset == 1 and label_map.num_classes == 3
  with open(os.path.join(out_dir, 'label_map.json')) as f:
    assert json.load(f)['num_classes'] == 3

  features = _raw_examples(sorted(tf.io.gfile.glob(f'{out_dir}/validation-*')))
  per_label = {}
  for feature in features:
    label = feature['image/class/label'].int64_list.value[0]
    synset = feature['image/class/synset'].bytes_list.value[0].decode()
    assert label_map.classes[label - 1] == synset  # Label k + 1 is folder k.
    assert feature['image/format'].bytes_list.value[0] == b'JPEG'  # PNG/BMP/CMYK re-encoded.
    assert records.sniff_image_format(feature['image/encoded'].bytes_list.value[0]) == 'JPEG'
    assert feature['image/height'].int64_list.value[0] == fx.PHOTO_SIZE[1]
    per_label[label] = per_label.get(label, 0) + 1
  assert per_label == {1: counts['n01_cat'], 2: counts['n02_drink'], 3: counts['n03_scene']}

  config = config_lib.DataConfig(
      input_path=f'{out_dir}/validation-*', is_training=False, global_batch_size=4,
      image_size=32, num_classes=label_map.num_classes, label_offset=label_map.label_offset)
  batches = fx.collect(pipeline.build_dataset(config))
  seen = fx.eval_labels_seen(batches)
  assert sorted(seen) == sorted(l - 1 for l, n in per_label.items() for _ in range(n))


def test_unreadable_image_is_named_or_skipped_and_counted(tmp_path, capsys):
  _image_folder(str(tmp_path / 'in'))
  broken = tmp_path / 'in' / 'n02_drink' / 'broken.jpg'
  broken.write_bytes(fx.encode(fx.photos()[0][1])[:150])
  with pytest.raises(convert.UnreadableImageError, match='broken.jpg'):
    convert.convert_image_folder(str(tmp_path / 'in'), str(tmp_path / 'a'), progress=False)
  assert convert.main([f'--input_dir={tmp_path}/in', f'--output_dir={tmp_path}/b',
                       '--no_progress']) == 1
  assert 'broken.jpg' in capsys.readouterr().err

  result = convert.convert_image_folder(str(tmp_path / 'in'), str(tmp_path / 'c'),
                                        num_shards=2, on_error='skip', progress=False)
  assert result.num_written == 7 and len(result.skipped) == 1
  assert result.skipped[0][0].endswith('broken.jpg')
  assert sum(1 for _ in tf.data.TFRecordDataset(result.shard_paths)) == 7


def test_numpy_digits_convert_and_read_back(tmp_path):
  images, labels = fx.digits()
  images, labels = images[:50], labels[:50]
  npz = str(tmp_path / 'digits.npz')
  np.savez(npz, images=images, labels=labels,
           class_names=np.array([str(d) for d in range(10)]))
  assert convert.main([f'--input_npz={npz}', f'--output_dir={tmp_path}/out', '--split=train',
                       '--num_shards=2', '--image_format=PNG', '--no_progress']) == 0
  label_map = records.LabelMap.read(str(tmp_path / 'out'))
  assert label_map.classes == [str(d) for d in range(10)] and label_map.label_offset == 0

  config = config_lib.DataConfig(
      input_path=f'{tmp_path}/out/train-*', is_training=False, global_batch_size=16,
      image_size=8, num_classes=10, label_offset=0, aug_crop=False)
  batches = fx.collect(pipeline.build_dataset(config))
  seen = fx.eval_labels_seen(batches)
  assert sorted(seen) == sorted(labels.tolist())
  # PNG is lossless and aug_crop=False keeps the 8x8 digit whole: pixels survive exactly.
  mean, stddev = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
  restored = np.round(batches[0][0] * stddev + mean)[..., 0].astype(np.uint8)
  originals = {tuple(img.ravel()) for img in images}
  mask = batches[0][1]['mask']
  assert all(tuple(r.ravel()) in originals for r, m in zip(restored, mask) if m)


def test_numpy_input_is_checked():
  with pytest.raises(ValueError, match='uint8'):
    convert.convert_arrays(np.zeros((2, 4, 4), np.float32), np.zeros(2, np.int64), '/tmp/x')
  with pytest.raises(ValueError, match='0-based'):
    convert.convert_arrays(np.zeros((2, 4, 4), np.uint8), np.array([0, -1]), '/tmp/x')


def test_record_framing_matches_file_size(tmp_path):
  items = fx.photo_items(5, 1)
  paths = fx.write_records(str(tmp_path), 'train', items, 2)
  assert [os.path.basename(p) for p in paths] == ['train-00000-of-00002', 'train-00001-of-00002']
  for path in paths:
    used = sum(len(r.numpy()) + records.RECORD_FRAMING_BYTES
               for r in tf.data.TFRecordDataset(path))
    assert used == os.path.getsize(path)
  assert records.shard_name('validation', 7, 128) == 'validation-00007-of-00128'
  assert [records.sniff_image_format(fx.encode(fx.photos()[0][1], f))
          for f in ('JPEG', 'PNG', 'GIF', 'BMP')] == ['JPEG', 'PNG', 'GIF', 'BMP']
  assert records.sniff_image_format(b'hello') is None
