"""Encoded image bytes -> the model's input image: one transform for training, eval and serving.

  ImageParser(config)(image_bytes) -> [image_size, image_size, 3] normalised image (config.dtype),
      Model Garden's classification parser: fused decode-and-crop for JPEG, `images.decode_rgb`
      for PNG / GIF / BMP / WebP and JPEGs too small for the crop; `parse_pixels` applies the same
      transform to already-decoded pixels (serving, export parity checks)
  parse_images(dataset, image_parser, guard, on_bad_image, deterministic)
      maps decoded-record dicts' IMAGE through the parser; with `guard`, an undecodable image
      stops the input naming its shard and record, or (on_bad_image='skip') is skipped with a
      warning
"""
from typing import Optional

import tensorflow as tf

from official.vision.configs import common
from official.vision.dataloaders import classification_input
from official.vision.ops import preprocess_ops

from official_halonet.data import config as config_lib
from official_halonet.data import images
from official_halonet.data import shards
from official_halonet.data.element_keys import IMAGE, LABEL, OK


class ImageParser:
  """Encoded image bytes -> [image_size, image_size, 3] normalised image, via Model Garden.

  Holds two Model Garden `classification_input.Parser`s with identical settings: one with
  `decode_jpeg_only=True` (fused decode-and-crop, the fast path for JPEG bytes, grayscale and
  CMYK included) and one with `decode_jpeg_only=False`, fed already-decoded pixels: those of
  `images.decode_rgb` (PNG / GIF first frame / BMP / WebP bytes, chosen per record from the magic
  bytes, and JPEGs too small for the fused crop), or the caller's (`parse_pixels`). Images too
  small for the center crop are enlarged first (`images.enlarge_for_crop`).
  """

  def __init__(self, config: config_lib.DataConfig):
    aug_type = config.aug_type
    if config.randaug_magnitude:
      aug_type = common.Augmentation(
          type='randaug',
          randaug=common.RandAugment(magnitude=float(config.randaug_magnitude),
                                     num_layers=config.randaug_num_layers))
    kwargs = dict(
        output_size=[config.image_size, config.image_size],
        num_classes=config.num_classes,
        image_field_key=IMAGE,
        label_field_key=LABEL,
        aug_rand_hflip=config.aug_rand_hflip,
        aug_crop=config.aug_crop,
        aug_type=aug_type,
        color_jitter=config.color_jitter,
        random_erasing=config.random_erasing,
        is_multilabel=False,  # Labels are ours; Model Garden parses the image only.
        dtype=config.dtype,
        center_crop_fraction=config.center_crop_fraction,
        tf_resize_method=config.tf_resize_method,
        three_augment=config.three_augment)
    if config.crop_area_range is not None:
      kwargs['crop_area_range'] = tuple(config.crop_area_range)
    self._is_training = bool(config.is_training)
    self._jpeg_parse = classification_input.Parser(
        decode_jpeg_only=True, **kwargs).parse_fn(self._is_training)
    self._pixel_parse = classification_input.Parser(
        decode_jpeg_only=False, **kwargs).parse_fn(self._is_training)
    # Training falls back to Model Garden's default center crop when its random crop fails.
    self._crop_fraction = (preprocess_ops.CENTER_CROP_FRACTION if self._is_training
                           else config.center_crop_fraction) if config.aug_crop else None
    self.output_shape = [config.image_size, config.image_size, 3]
    self.dtype = tf.dtypes.as_dtype(config.dtype)

  def __call__(self, image_bytes: tf.Tensor) -> tf.Tensor:
    def fused_jpeg():
      # The label entry only satisfies Model Garden's parser signature; its label is unused.
      return self._jpeg_parse({IMAGE: image_bytes, LABEL: tf.constant(0, tf.int64)})[0]

    def decoded():
      return self.parse_pixels(images.decode_rgb(image_bytes))

    def jpeg():
      if self._crop_fraction is None:
        return fused_jpeg()
      shape = tf.image.extract_jpeg_shape(image_bytes)
      return tf.cond(images.crop_is_empty(shape[0], shape[1], self._crop_fraction),
                     decoded, fused_jpeg)

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, decoded)
    image.set_shape(self.output_shape)
    return image

  def parse_pixels(self, pixels: tf.Tensor) -> tf.Tensor:
    """The same transform for an already-decoded [H, W, 3] image with values 0..255 (serving)."""
    if self._crop_fraction is not None:
      pixels = images.enlarge_for_crop(pixels, self._crop_fraction)
    image = self._pixel_parse({IMAGE: pixels, LABEL: tf.constant(0, tf.int64)})[0]
    image.set_shape(self.output_shape)
    return image


# Records parsed together inside one guard (see `parse_images`).
GUARD_GROUP_SIZE = 16


def parse_images(dataset: tf.data.Dataset, image_parser: ImageParser,
                 guard: bool, on_bad_image: str,
                 deterministic: Optional[bool]) -> tf.data.Dataset:
  """Decoded-record dicts -> the same dicts with IMAGE parsed; bad images raise or are skipped.

  The input elements must have fixed shapes (labels already formatted by `format_label`).
  With `guard`, records are taken in groups of GUARD_GROUP_SIZE; each group is parsed inside
  its own small dataset whose errors are caught (`ignore_errors`), and every record whose parse
  failed comes back with OK=False, so the failure is reported with its shard and record index.
  Successfully parsed records keep their order; a failed one moves to the end of its group.
  Groups are parsed in parallel by the surrounding interleave. Without `guard`, a plain parallel
  map, where a decode error is TensorFlow's own and names no record.
  """
  autotune = tf.data.AUTOTUNE
  if not guard:
    def parse_unguarded(element):
      return {**element, IMAGE: image_parser(element[IMAGE]), OK: tf.constant(True)}
    return dataset.map(parse_unguarded, num_parallel_calls=autotune, deterministic=deterministic)

  def parse_guarded_group(group):
    def restore(position, image, ok):
      image_bytes = group[IMAGE][position]
      return {
          shards.SOURCE: group[shards.SOURCE][position],
          shards.INDEX: group[shards.INDEX][position],
          LABEL: tf.gather(group[LABEL], position),
          IMAGE: image,
          OK: ok,
          'reason': tf.cond(ok, lambda: tf.constant(''),
                            lambda: images.describe_undecodable(image_bytes)),
      }
    return images.parse_or_flag(image_parser, group[IMAGE], image_parser.output_shape,
                                image_parser.dtype).map(restore)

  dataset = dataset.batch(GUARD_GROUP_SIZE).interleave(
      parse_guarded_group, cycle_length=None, block_length=1, num_parallel_calls=autotune,
      deterministic=deterministic)

  def describe(element):
    return ['shard', element[shards.SOURCE], 'record index', element[shards.INDEX], ':',
            element['reason']]

  if on_bad_image == 'skip':
    def warn(element):
      def print_warning():
        with tf.control_dependencies(
            [tf.print('WARNING: skipping an undecodable image:', *describe(element))]):
          return tf.constant(True)
      printed = tf.cond(element[OK], lambda: tf.constant(True), print_warning)
      with tf.control_dependencies([printed]):
        return {**element, OK: tf.identity(element[OK])}
    return dataset.map(warn).filter(lambda element: element[OK])

  def stop(element):
    check = tf.debugging.Assert(
        element[OK], ['Could not decode the image of'] + describe(element) + [
            '. Fix or drop the record, or set on_bad_image="skip".'], summarize=8)
    with tf.control_dependencies([check]):
      return {**element, OK: tf.identity(element[OK])}
  return dataset.map(stop, num_parallel_calls=autotune, deterministic=deterministic)
