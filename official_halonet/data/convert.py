"""Convert a folder of class sub-folders of images, or a NumPy dataset, to ImageNet TFRecords.

    python -m official_halonet.data.convert --input_dir=/data/flowers/train \
        --output_dir=/data/flowers-tfrecords --split=train --num_shards=16 --label_offset=0
    python -m official_halonet.data.convert --input_npz=digits.npz \
        --output_dir=/tmp/digits --split=validation --num_shards=2

Folder input: every sub-folder of --input_dir is a class; classes are numbered in sorted folder
name order, so class k is stored as label k + label_offset (use 1 to match the ImageNet
converter's 1..1000, 0 for 0..N-1). Files with image extensions (.jpg .jpeg .png .bmp .gif
.webp, any case) are read; other files (.DS_Store, ...) are counted and ignored.
NumPy input: an .npz with `images` (uint8 [N, H, W] or [N, H, W, 1|3]), `labels` (int [N], 0-based)
and optionally `class_names` ([num_classes] strings).

Output: `{split}-{i:05d}-of-{n:05d}` shards in the ImageNet format (`records.make_example`) and
`label_map.json` (class names in label order, label_offset, num_classes). Examples are shuffled
with a fixed seed before sharding (as the ImageNet converter does), so every shard mixes classes.
With --reencode=auto (default), PNG / GIF (first frame) / BMP / WebP files and CMYK JPEGs are
re-encoded as RGB JPEG, like the ImageNet converter; other JPEGs are stored byte for byte.

An image that cannot be decoded stops the conversion with its path (UnreadableImageError), or,
with --on_error=skip, is left out, counted and listed at the end.
"""
import concurrent.futures
import dataclasses
import os
import random
import sys
import time
from typing import Iterable, List, Optional, Sequence, Tuple

from absl import flags
import numpy as np
import tensorflow as tf

from official_halonet.data import command_line
from official_halonet.data import images
from official_halonet.data import records

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
REENCODE_CHOICES = ('auto', 'always', 'never')
_WINDOW = 256  # Images in flight between the decoding threads and the shard writer.


class UnreadableImageError(ValueError):
  """An input image that cannot be decoded; the message names the file."""


@dataclasses.dataclass
class ConversionResult:
  """What `convert_*` wrote: shard paths, label map, counts, and the skipped inputs."""
  shard_paths: List[str]
  label_map_path: str
  num_written: int
  skipped: List[Tuple[str, str]]  # (input name, reason)
  num_ignored_files: int = 0


class ProgressBar:
  """A plain text progress bar on stderr, redrawn at most every `interval` seconds."""

  def __init__(self, total: int, stream=None, interval: float = 0.5, width: int = 30):
    self._total, self._stream = max(total, 0), stream or sys.stderr
    self._interval, self._width = interval, width
    self._start = self._last = time.time()
    self.count = 0

  def update(self, n: int = 1) -> None:
    self.count += n
    now = time.time()
    if now - self._last >= self._interval or self.count >= self._total:
      self._last = now
      self._draw(now)

  def _draw(self, now: float) -> None:
    fraction = self.count / self._total if self._total else 1.0
    filled = int(round(self._width * fraction))
    rate = self.count / max(now - self._start, 1e-9)
    self._stream.write(f'\r[{"#" * filled}{"." * (self._width - filled)}] '
                       f'{self.count}/{self._total} images {100 * fraction:5.1f}% '
                       f'{rate:8.1f} img/s')
    self._stream.flush()

  def close(self) -> None:
    self._draw(time.time())
    self._stream.write('\n')
    self._stream.flush()


@dataclasses.dataclass
class _Encoded:
  image_bytes: bytes
  height: int
  width: int
  image_format: str


def encode_image_bytes(data: bytes, name: str, reencode: str = 'auto',
                       jpeg_quality: int = 95) -> _Encoded:
  """Checks that `data` decodes and returns the bytes to store; raises UnreadableImageError.

  reencode: 'auto' re-encodes non-JPEG and CMYK JPEG as RGB JPEG; 'always' re-encodes every
  image as RGB JPEG; 'never' stores the input bytes.
  """
  kind = records.sniff_image_format(data)
  if kind is None:
    raise UnreadableImageError(f'{name}: not a {images.SUPPORTED} image '
                               f'({len(data)} bytes, starting {data[:8]!r}).')
  try:
    image = images.decode_rgb(tf.constant(data))  # as training, eval and serving decode it
    height, width = int(image.shape[0]), int(image.shape[1])
    cmyk = kind == 'JPEG' and int(tf.image.extract_jpeg_shape(data)[2]) == 4
    if reencode == 'always' or (reencode == 'auto' and (kind != 'JPEG' or cmyk)):
      data = tf.io.encode_jpeg(image, quality=jpeg_quality, format='rgb').numpy()
      kind = 'JPEG'
  except tf.errors.InvalidArgumentError as e:
    raise UnreadableImageError(f'{name}: {kind} image does not decode: '
                               f'{e.message.strip()[:200]}') from None
  return _Encoded(data, height, width, kind)


def list_image_folder(input_dir: str) -> Tuple[List[str], List[Tuple[str, int]], int]:
  """(class names sorted, [(path, class index)], number of ignored non-image files)."""
  if not tf.io.gfile.isdir(input_dir):
    raise FileNotFoundError(f'--input_dir {input_dir} is not a directory.')
  classes = sorted(d for d in tf.io.gfile.listdir(input_dir)
                   if tf.io.gfile.isdir(os.path.join(input_dir, d)))
  classes = [c.rstrip('/') for c in classes]
  if not classes:
    raise ValueError(f'{input_dir} has no class sub-folders.')
  items, ignored = [], 0
  for k, name in enumerate(classes):
    folder = os.path.join(input_dir, name)
    for filename in sorted(tf.io.gfile.listdir(folder)):
      path = os.path.join(folder, filename)
      if tf.io.gfile.isdir(path):
        continue
      if filename.lower().endswith(IMAGE_EXTENSIONS):
        items.append((path, k))
      else:
        ignored += 1
  return classes, items, ignored


def _write(encoded_items: Iterable[Tuple[Optional[_Encoded], int, str, str]],
           total: int, classes: Sequence[str], label_offset: int, output_dir: str,
           split: str, num_shards: int, progress: bool) -> Tuple[List[str], int,
                                                                 List[Tuple[str, str]]]:
  """Writes (encoded or None, class index, name, skip reason) items into contiguous shards."""
  bar = ProgressBar(total) if progress else None
  skipped, written = [], []

  def examples():
    for encoded, k, name, reason in encoded_items:
      if bar:
        bar.update()
      if encoded is None:
        skipped.append((name, reason))
        yield None
        continue
      written.append(name)
      yield records.make_example(
          encoded.image_bytes, k + label_offset, height=encoded.height, width=encoded.width,
          image_format=encoded.image_format, synset=classes[k],
          filename=os.path.basename(name))

  try:
    paths = records.write_shards(examples(), output_dir, split, num_shards, total)
  finally:
    if bar:
      bar.close()
  return paths, len(written), skipped


def _encode_all(sources: Sequence[Tuple[str, int]], load, on_error: str, reencode: str,
                num_threads: int):
  """Yields (encoded or None, class index, name, reason) in input order, decoding in threads."""
  def work(item):
    name, k = item
    try:
      return encode_image_bytes(load(name), name, reencode), k, name, ''
    except UnreadableImageError as e:
      if on_error == 'raise':
        raise
      return None, k, name, str(e)

  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
    for start in range(0, len(sources), _WINDOW):
      yield from pool.map(work, sources[start:start + _WINDOW])


def _check_common(on_error: str, reencode: str, num_shards: int) -> None:
  if on_error not in ('raise', 'skip'):
    raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}.')
  if reencode not in REENCODE_CHOICES:
    raise ValueError(f'reencode must be one of {REENCODE_CHOICES}, got {reencode!r}.')
  if num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}.')


def convert_image_folder(input_dir: str, output_dir: str, split: str = 'train',
                         num_shards: int = 8, label_offset: int = 0,
                         on_error: str = 'raise', reencode: str = 'auto',
                         shuffle: bool = True, seed: int = 12345, num_threads: int = 8,
                         progress: bool = True) -> ConversionResult:
  """Folder of class sub-folders -> sharded ImageNet-format TFRecords + label_map.json."""
  _check_common(on_error, reencode, num_shards)
  classes, items, ignored = list_image_folder(input_dir)
  if shuffle:
    random.Random(seed).shuffle(items)

  def load(path):
    with tf.io.gfile.GFile(path, 'rb') as f:
      return f.read()

  encoded = _encode_all(items, load, on_error, reencode, num_threads)
  paths, written, skipped = _write(encoded, len(items), classes, label_offset, output_dir,
                                   split, num_shards, progress)
  label_map_path = records.LabelMap(classes, label_offset).write(output_dir)
  return ConversionResult(paths, label_map_path, written, skipped, ignored)


def convert_arrays(images: np.ndarray, labels: np.ndarray, output_dir: str,
                   class_names: Optional[Sequence[str]] = None, split: str = 'train',
                   num_shards: int = 8, label_offset: int = 0, shuffle: bool = True,
                   seed: int = 12345, image_format: str = 'JPEG', jpeg_quality: int = 95,
                   progress: bool = True) -> ConversionResult:
  """uint8 images [N, H, W] or [N, H, W, 1|3] and 0-based labels [N] -> TFRecords.

  image_format 'JPEG' (default, the fast decode path) or 'PNG' (lossless).
  """
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8:
    raise ValueError(f'images must be uint8, got {images.dtype}; scale them to 0..255 first.')
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'images must be [N, H, W] or [N, H, W, 1|3], got {images.shape}.')
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers of shape [{images.shape[0]}], got '
                     f'{labels.dtype} {labels.shape}.')
  if labels.size and labels.min() < 0:
    raise ValueError(f'labels must be 0-based class ids, found {labels.min()}.')
  num_classes = int(labels.max()) + 1 if labels.size else 0
  if class_names is None:
    class_names = [f'class_{k}' for k in range(num_classes)]
  class_names = [str(c) for c in class_names]
  if len(class_names) < num_classes:
    raise ValueError(f'{len(class_names)} class_names for labels up to {num_classes - 1}.')
  if image_format.upper() not in ('JPEG', 'PNG'):
    raise ValueError(f'image_format must be JPEG or PNG, got {image_format!r}.')
  order = list(range(images.shape[0]))
  if shuffle:
    random.Random(seed).shuffle(order)

  def encoded_items():
    for i in order:
      image = tf.constant(images[i])
      if image_format.upper() == 'PNG':
        data = tf.io.encode_png(image).numpy()
      else:
        data = tf.io.encode_jpeg(image, quality=jpeg_quality).numpy()
      yield (_Encoded(data, images.shape[1], images.shape[2], image_format.upper()),
             int(labels[i]), f'array[{i}]', '')

  _check_common('raise', 'never', num_shards)
  paths, written, skipped = _write(encoded_items(), len(order), class_names, label_offset,
                                   output_dir, split, num_shards, progress)
  label_map_path = records.LabelMap(class_names, label_offset).write(output_dir)
  return ConversionResult(paths, label_map_path, written, skipped)


def _define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string('input_dir', None, 'Folder with one sub-folder of images per class.',
                      flag_values=values)
  flags.DEFINE_string('input_npz', None, '.npz with images (uint8), labels, [class_names].',
                      flag_values=values)
  flags.mark_flags_as_mutual_exclusive(['input_dir', 'input_npz'], required=True,
                                       flag_values=values)
  flags.DEFINE_string('output_dir', None, 'Where the shards and label_map.json go.',
                      flag_values=values)
  flags.mark_flag_as_required('output_dir', flag_values=values)
  flags.DEFINE_string('split', 'train', 'Shard name prefix: train, validation.',
                      flag_values=values)
  flags.DEFINE_integer('num_shards', 8, 'Number of output shards.', flag_values=values)
  flags.DEFINE_integer('label_offset', 0,
                       'Stored label of class 0: 1 matches the ImageNet converter.',
                       flag_values=values)
  flags.DEFINE_enum('on_error', 'raise', ['raise', 'skip'],
                    'Unreadable image: stop naming it, or skip it and count it.',
                    flag_values=values)
  flags.DEFINE_enum('reencode', 'auto', list(REENCODE_CHOICES),
                    'Re-encode images as JPEG: auto (non-JPEG and CMYK), always or never.',
                    flag_values=values)
  flags.DEFINE_enum('image_format', 'JPEG', ['JPEG', 'PNG'], 'Encoding of NumPy images.',
                    flag_values=values)
  flags.DEFINE_bool('no_shuffle', False, 'Keep the input order.', flag_values=values)
  flags.DEFINE_integer('seed', 12345, 'Shuffling seed.', flag_values=values)
  flags.DEFINE_integer('num_threads', 8, 'Threads reading and encoding images.',
                       flag_values=values)
  flags.DEFINE_bool('no_progress', False, 'No progress bar.', flag_values=values)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = command_line.parse(
      _define_flags, argv, prog='python -m official_halonet.data.convert',
      description='Image folder or NumPy dataset -> sharded ImageNet-format TFRecords.')
  try:
    if args.input_dir:
      result = convert_image_folder(
          args.input_dir, args.output_dir, split=args.split, num_shards=args.num_shards,
          label_offset=args.label_offset, on_error=args.on_error, reencode=args.reencode,
          shuffle=not args.no_shuffle, seed=args.seed, num_threads=args.num_threads,
          progress=not args.no_progress)
    else:
      with np.load(args.input_npz, allow_pickle=False) as data:
        if 'images' not in data or 'labels' not in data:
          raise ValueError(f'{args.input_npz} needs arrays "images" and "labels", has '
                           f'{list(data.keys())}.')
        class_names = list(data['class_names']) if 'class_names' in data else None
        result = convert_arrays(
            data['images'], data['labels'], args.output_dir, class_names=class_names,
            split=args.split, num_shards=args.num_shards, label_offset=args.label_offset,
            shuffle=not args.no_shuffle, seed=args.seed, image_format=args.image_format,
            progress=not args.no_progress)
  except (UnreadableImageError, ValueError, FileNotFoundError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  print(f'Wrote {result.num_written} examples to {len(result.shard_paths)} shards in '
        f'{args.output_dir}; label map {result.label_map_path}.')
  if result.num_ignored_files:
    print(f'Ignored {result.num_ignored_files} non-image file(s).')
  if result.skipped:
    print(f'Skipped {len(result.skipped)} unreadable image(s):')
    for name, reason in result.skipped:
      print(f'  {name}: {reason}')
  return 0


if __name__ == '__main__':
  command_line.run(main, 'convert')
