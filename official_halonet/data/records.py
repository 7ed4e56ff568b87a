"""The ImageNet TFRecord format: feature keys, shard names, writing examples, label maps.

The format is the one written by the standard ImageNet-to-TFRecord converter
(`build_imagenet_data.py` of the TPU / Inception repositories) and read by Model Garden's
`classification_input.Decoder`:

  image/encoded       bytes   the encoded image (JPEG; PNG, GIF, BMP and WebP are also decoded)
  image/class/label   int64   the class label; ImageNet converter: 1..1000 with 0 = background
                              (label_offset=1); TFDS and most other datasets: 0..N-1
                              (label_offset=0). ImageNet-21k multi-label data stores a list.
  image/format        bytes   'JPEG' / 'PNG'
  image/height, image/width, image/channels   int64
  image/colorspace    bytes   'RGB'
  image/class/synset  bytes   the class folder name (e.g. 'n01440764')
  image/class/text    bytes   a readable class name (may be empty)
  image/filename      bytes   the source file name

Shards are named `{split}-{index:05d}-of-{num_shards:05d}` (`train-00000-of-01024`,
`validation-00000-of-00128`). Every TFRecord record is framed as 8 bytes of length, 4 bytes of
length CRC, the payload and 4 bytes of payload CRC, so a shard whose file size differs from
sum(len(record) + 16) is truncated or corrupt (`RECORD_FRAMING_BYTES`).
"""
import dataclasses
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Union

import tensorflow as tf

IMAGE_KEY = 'image/encoded'
LABEL_KEY = 'image/class/label'
# The keys TFDS uses when it serializes an image classification dataset (e.g. imagenet2012).
TFDS_IMAGE_KEY = 'image'
TFDS_LABEL_KEY = 'label'
# Bytes TFRecord adds around every record: uint64 length, uint32 masked CRC of the length, and
# uint32 masked CRC of the data.
RECORD_FRAMING_BYTES = 16
LABEL_MAP_FILENAME = 'label_map.json'

_MAGIC = (
    (b'\xff\xd8\xff', 'JPEG'),
    (b'\x89PNG\r\n\x1a\n', 'PNG'),
    (b'GIF87a', 'GIF'),
    (b'GIF89a', 'GIF'),
    (b'BM', 'BMP'),
)


def sniff_image_format(data: bytes) -> Optional[str]:
  """Returns 'JPEG', 'PNG', 'GIF', 'BMP' or 'WEBP' from the leading magic bytes, or None."""
  for magic, name in _MAGIC:
    if data.startswith(magic):
      return name
  if data[:4] == b'RIFF' and data[8:12] == b'WEBP':
    return 'WEBP'
  return None


def shard_name(split: str, index: int, num_shards: int) -> str:
  """`train-00003-of-01024`: the ImageNet converter's shard naming."""
  return f'{split}-{index:05d}-of-{num_shards:05d}'


def _bytes_feature(value: Union[bytes, str]) -> tf.train.Feature:
  if isinstance(value, str):
    value = value.encode('utf-8')
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(values: Union[int, Sequence[int]]) -> tf.train.Feature:
  if hasattr(values, '__index__'):  # int or NumPy integer
    values = [int(values)]
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def make_example(image_bytes: bytes,
                 label: Union[int, Sequence[int]],
                 *,
                 height: int = 0,
                 width: int = 0,
                 channels: int = 3,
                 image_format: Optional[str] = None,
                 synset: str = '',
                 class_text: str = '',
                 filename: str = '',
                 image_key: str = IMAGE_KEY,
                 label_key: str = LABEL_KEY) -> tf.train.Example:
  """Builds one ImageNet-format `tf.train.Example`.

  Args:
    image_bytes: the encoded image.
    label: the stored label (already including any label offset), or a list of labels for
      multi-label (ImageNet-21k style) data.
    height, width, channels: the decoded image size (informational; readers decode the image).
    image_format: 'JPEG', 'PNG', ...; sniffed from the bytes when None.
    synset, class_text, filename: informational strings.
    image_key, label_key: the feature keys; `TFDS_IMAGE_KEY` / `TFDS_LABEL_KEY` write the
      TFDS layout.
  Returns:
    The example.
  """
  if image_format is None:
    image_format = sniff_image_format(image_bytes) or 'UNKNOWN'
  feature = {
      image_key: _bytes_feature(image_bytes),
      label_key: _int64_feature(label),
      'image/format': _bytes_feature(image_format),
      'image/height': _int64_feature(height),
      'image/width': _int64_feature(width),
      'image/channels': _int64_feature(channels),
      'image/colorspace': _bytes_feature('RGB'),
      'image/class/synset': _bytes_feature(synset),
      'image/class/text': _bytes_feature(class_text),
      'image/filename': _bytes_feature(filename),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature))


def write_shards(examples: Iterable[Optional[tf.train.Example]],
                 output_dir: str,
                 split: str,
                 num_shards: int,
                 total: Optional[int] = None) -> List[str]:
  """Writes `examples` in contiguous blocks into `num_shards` TFRecord shards.

  Example k goes to shard floor(k * num_shards / total) (total: len(examples) unless given, for a
  stream), so shards keep the input order and differ in size by at most one. A None keeps its
  position but writes nothing (an input the converter skipped). Returns the shard paths in order.
  """
  if num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}.')
  if total is None:
    examples = list(examples)
    total = len(examples)
  tf.io.gfile.makedirs(output_dir)
  paths = [os.path.join(output_dir, shard_name(split, i, num_shards))
           for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  try:
    for k, example in enumerate(examples):
      if example is not None:
        writers[k * num_shards // max(total, 1)].write(example.SerializeToString())
  finally:
    for w in writers:
      w.close()
  return paths


@dataclasses.dataclass
class LabelMap:
  """Class names in label order, and how they are stored.

  `classes[k]` has stored label `k + label_offset`; `num_classes == len(classes)`.
  """
  classes: List[str]
  label_offset: int
  class_texts: Optional[List[str]] = None

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def to_json(self) -> Dict[str, object]:
    return {
        'label_offset': self.label_offset,
        'num_classes': self.num_classes,
        'classes': list(self.classes),
        'class_texts': list(self.class_texts) if self.class_texts else None,
    }

  def write(self, output_dir: str) -> str:
    """Writes `label_map.json` into `output_dir` and returns its path."""
    path = os.path.join(output_dir, LABEL_MAP_FILENAME)
    with tf.io.gfile.GFile(path, 'w') as f:
      json.dump(self.to_json(), f, indent=1)
    return path

  @classmethod
  def read(cls, path: str) -> 'LabelMap':
    """Reads a `label_map.json` (a file, or a directory holding one)."""
    if tf.io.gfile.isdir(path):
      path = os.path.join(path, LABEL_MAP_FILENAME)
    with tf.io.gfile.GFile(path, 'r') as f:
      data = json.load(f)
    label_map = cls(classes=list(data['classes']), label_offset=int(data['label_offset']),
                    class_texts=data.get('class_texts'))
    if label_map.num_classes != int(data['num_classes']):
      raise ValueError(f'{path}: num_classes={data["num_classes"]} but '
                       f'{label_map.num_classes} class names.')
    return label_map
