"""Helpers for the data tests (tests/test_data_*.py): real photos, encodings, tiny shards.

Photos come from packages installed with the test requirements, never the network:
scikit-image's `skimage.data` (astronaut, coffee, chelsea, rocket, camera = grayscale) and
scikit-learn's `load_sample_images` (china, flower) and `load_digits`.
"""
import io
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image  # Installed with scikit-image; used for CMYK JPEGs, which TF cannot write.
import skimage.data
import sklearn.datasets

import official_halonet  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
import tensorflow as tf

from official_halonet.data import records

PHOTO_SIZE = (56, 48)  # (width, height): small and not square, so crops matter.


def _resize(array: np.ndarray, size=PHOTO_SIZE) -> np.ndarray:
  return np.asarray(Image.fromarray(array).resize(size, Image.BILINEAR))


def photos(size=PHOTO_SIZE) -> List[Tuple[str, np.ndarray]]:
  """(name, uint8 RGB [h, w, 3]) real photos, resized to `size` = (width, height)."""
  out = [(name, getattr(skimage.data, name)()) for name in
         ('astronaut', 'coffee', 'chelsea', 'rocket')]
  sample = sklearn.datasets.load_sample_images()
  out += [(fname.rsplit('/', 1)[-1].split('.')[0], image)
          for fname, image in zip(sample.filenames, sample.images)]
  return [(name, _resize(image, size)) for name, image in out]


def gray_photo(size=PHOTO_SIZE) -> np.ndarray:
  """skimage's `camera()`: uint8 [h, w], a real grayscale photo."""
  return _resize(skimage.data.camera(), size)


def digits() -> Tuple[np.ndarray, np.ndarray]:
  """sklearn digits as uint8 [1797, 8, 8] (0..16 scaled to 0..255) and labels 0..9."""
  data = sklearn.datasets.load_digits()
  images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
  return images, data.target.astype(np.int64)


def encode(array: np.ndarray, fmt: str = 'JPEG', mode: Optional[str] = None,
           quality: int = 95) -> bytes:
  """Encodes an image with Pillow; `mode` converts first (e.g. 'CMYK', 'L')."""
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  buffer = io.BytesIO()
  if fmt == 'JPEG':
    image.save(buffer, fmt, quality=quality)
  elif fmt == 'WEBP':  # lossless: decodes to exactly `array`
    image.save(buffer, fmt, lossless=True)
  else:
    image.save(buffer, fmt)
  return buffer.getvalue()


def write_records(directory: str, split: str, items: Sequence[Tuple[bytes, object]],
                  num_shards: int, tfds_layout: bool = False) -> List[str]:
  """Writes (image bytes, stored label or list of labels) items into contiguous shards."""
  image_key = records.TFDS_IMAGE_KEY if tfds_layout else records.IMAGE_KEY
  label_key = records.TFDS_LABEL_KEY if tfds_layout else records.LABEL_KEY
  examples = [records.make_example(data, label, image_key=image_key, label_key=label_key)
              for data, label in items]
  return records.write_shards(examples, directory, split, num_shards)


def photo_items(num_examples: int, label_offset: int) -> List[Tuple[bytes, int]]:
  """`num_examples` JPEG photos (cycling through `photos()`), example k stored with label
  k + label_offset, so the label identifies the example."""
  pics = photos()
  return [(encode(pics[k % len(pics)][1]), k + label_offset) for k in range(num_examples)]


def collect(dataset: tf.data.Dataset, max_batches: Optional[int] = None):
  """Lists the batches of `dataset` as NumPy structures."""
  if max_batches is not None:
    dataset = dataset.take(max_batches)
  return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset]


def eval_labels_seen(batches) -> List[int]:
  """Labels of the real (mask 1) examples of eval batches, in order."""
  seen = []
  for _, target in batches:
    seen.extend(int(l) for l, m in zip(target['labels'], target['mask']) if m == 1.0)
  return seen


def animation(frames: Sequence[np.ndarray], fmt: str, **kwargs) -> bytes:
  """A multi-frame GIF or WebP of `frames` (uint8 RGB [h, w, 3] each), written by Pillow."""
  images = [Image.fromarray(frame) for frame in frames]
  buffer = io.BytesIO()
  images[0].save(buffer, fmt, save_all=True, append_images=images[1:], **kwargs)
  return buffer.getvalue()


def first_frame_pixels(encoded: bytes) -> np.ndarray:
  """uint8 RGB [h, w, 3]: the first frame of an encoded image as Pillow decodes it."""
  return np.asarray(Image.open(io.BytesIO(encoded)).convert('RGB'))
