"""Image bytes and pixels -> the parser's input, one way for training, eval, validation and serving.

Formats (`decode_rgb`): JPEG (grayscale and CMYK included), PNG, GIF (its first frame), BMP and
still WebP, each to uint8 RGB [H, W, 3]; an alpha channel is dropped (PNG and WebP alike).
Animated WebP is refused before any decoder runs: TensorFlow 2.20's WebP decoder aborts the
whole process (heap corruption) on an animated WebP without an alpha flag, so it never sees one.

Tiny images (`enlarge_for_crop`): Model Garden's center crop keeps int(fraction * short side)
pixels, none of a 1-pixel-high image. Such an image is first enlarged by repeating every pixel
an integer number of times, so the crop window holds at least one pixel: a 1x1 image becomes an
image of its one colour, a 1xN strip is cropped to its middle pixel.

Per-input errors: `parse_or_flag` parses a group of inputs in a small tf.data pipeline whose
errors are caught, flagging every input that failed; `parse_batch` (serving) turns the first
failure into an InvalidArgumentError that names the input's position and `describe_undecodable`'s
reason. `check_pixels` does the same for NaN / infinite or empty pixel inputs.
"""
from typing import Callable, Sequence

import tensorflow as tf

JPEG, PNG, GIF, BMP, WEBP, ANIMATED_WEBP = 'JPEG', 'PNG', 'GIF', 'BMP', 'WebP', 'animated WebP'
SUPPORTED = 'JPEG, PNG, GIF, BMP or still WebP'
_HEAD = 32  # bytes read to tell the format


def image_format(image_bytes: tf.Tensor) -> tf.Tensor:
  """String scalar: JPEG, PNG, GIF, BMP, WebP, 'animated WebP' or '' from the leading bytes."""
  head = tf.strings.join([tf.strings.substr(image_bytes, 0, _HEAD), b'\0' * _HEAD])

  def starts(offset, magic):
    return tf.equal(tf.strings.substr(head, offset, len(magic)), magic)

  webp = tf.logical_and(starts(0, b'RIFF'), starts(8, b'WEBP'))
  # Extended WebP: a 'VP8X' chunk whose flags byte (file offset 20) has bit 1 set is animated.
  flags = tf.io.decode_raw(tf.strings.substr(head, 20, 1), tf.uint8)[0]
  animated = tf.logical_and(starts(12, b'VP8X'),
                            tf.not_equal(tf.bitwise.bitwise_and(flags, 2), 0))
  cases = [(tf.io.is_jpeg(image_bytes), JPEG), (starts(0, b'\x89PNG\r\n\x1a\n'), PNG),
           (tf.logical_or(starts(0, b'GIF87a'), starts(0, b'GIF89a')), GIF),
           (starts(0, b'BM'), BMP), (tf.logical_and(webp, animated), ANIMATED_WEBP), (webp, WEBP)]
  name = tf.constant('')
  for is_format, format_name in reversed(cases):
    name = tf.where(is_format, format_name, name)
  return name


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
  """Encoded image (string scalar) -> uint8 [H, W, 3] RGB; raises on what does not decode."""
  fmt = image_format(image_bytes)
  check = tf.debugging.Assert(tf.not_equal(fmt, ANIMATED_WEBP),
                              [f'animated WebP is not supported; send a still image ({SUPPORTED})'])
  with tf.control_dependencies([check]):
    image = tf.cond(
        tf.equal(fmt, WEBP),
        # TF's WebP decoder returns exactly the file's channels: RGB or RGBA.
        lambda: tf.io.decode_image(image_bytes, channels=0, expand_animations=False)[..., :3],
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
  image.set_shape([None, None, 3])
  return image


def crop_is_empty(height: tf.Tensor, width: tf.Tensor, crop_fraction: float) -> tf.Tensor:
  """True where Model Garden's center crop of an image this size would hold no pixel."""
  short = tf.cast(tf.minimum(height, width), tf.float32)
  return crop_fraction * short < 1.0


def enlarge_for_crop(image: tf.Tensor, crop_fraction: float) -> tf.Tensor:
  """[H, W, C] -> the image with every pixel repeated k times per axis, k the smallest integer
  that gives a crop of crop_fraction * short side at least one pixel (k = 1: unchanged)."""
  shape = tf.shape(image)
  crop = crop_fraction * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
  factor = tf.cast(tf.math.floor(1.0 / tf.maximum(crop, crop_fraction)), tf.int32) + 1
  return tf.cond(crop < 1.0,
                 lambda: tf.repeat(tf.repeat(image, factor, axis=0), factor, axis=1),
                 lambda: image)


def describe_undecodable(image_bytes: tf.Tensor) -> tf.Tensor:
  """String scalar: why `image_bytes` may not decode (its size, format or first bytes)."""
  fmt = image_format(image_bytes)
  size = tf.strings.as_string(tf.strings.length(image_bytes))
  head = tf.strings.reduce_join(tf.strings.as_string(
      tf.io.decode_raw(tf.strings.substr(image_bytes, 0, 8), tf.uint8)), separator=' ')
  unknown = tf.strings.join([f'not a {SUPPORTED} image (', size, ' bytes, first bytes [', head,
                             '])'])
  corrupt = tf.strings.join(['a ', fmt, ' image of ', size,
                             ' bytes that does not decode (truncated or corrupt)'])
  reason = tf.where(tf.equal(fmt, ''), unknown, corrupt)
  reason = tf.where(tf.equal(fmt, ANIMATED_WEBP),
                    'an animated WebP, which is not supported (send a still image)', reason)
  return tf.where(tf.equal(tf.strings.length(image_bytes), 0), 'empty (0 bytes)', reason)


def parse_or_flag(parse_fn: Callable[[tf.Tensor], tf.Tensor], inputs: tf.Tensor,
                  output_shape: Sequence[int], dtype: tf.DType,
                  parallel: bool = False) -> tf.data.Dataset:
  """(position int32, parsed image, ok bool) for each of `inputs` [N, ...], N >= 0.

  Each input is parsed inside a dataset whose errors are caught; an input whose parse failed
  comes back with ok=False and zeros. Parsed inputs keep their order; failed ones follow them.
  """
  count = tf.shape(inputs)[0]
  positions = tf.range(count)
  attempts = tf.data.Dataset.from_tensor_slices((positions, inputs)).map(
      lambda p, x: (p, parse_fn(x), tf.constant(True)),
      num_parallel_calls=tf.data.AUTOTUNE if parallel else None,
      deterministic=True if parallel else None).ignore_errors()
  # Placeholders for every position; only those of failed inputs are ever reached.
  failures = tf.data.Dataset.from_tensor_slices(positions).map(
      lambda p: (p, tf.zeros(output_shape, dtype), tf.constant(False)))

  def first_visit(seen, element):
    position = element[0]
    is_new = tf.logical_not(seen[position])
    seen = tf.tensor_scatter_nd_update(seen, [[position]], [True])
    return seen, (element, is_new)

  merged = attempts.concatenate(failures).scan(tf.zeros([count], tf.bool), first_visit)
  merged = merged.filter(lambda element, is_new: is_new).take(tf.cast(count, tf.int64))
  return merged.map(lambda element, is_new: element)


def _first_failure(ok: tf.Tensor) -> tf.Tensor:
  """Index of the first False in `ok` [N], N >= 0 (some valid index, or 0, when none is)."""
  count = tf.shape(ok)[0]
  first = tf.reduce_min(tf.where(ok, count, tf.range(count)))  # the int32 maximum when N = 0
  return tf.minimum(first, tf.maximum(count - 1, 0))


def parse_batch(parse_fn: Callable[[tf.Tensor], tf.Tensor], image_bytes: tf.Tensor,
                output_shape: Sequence[int], dtype: tf.DType, what: str) -> tf.Tensor:
  """string [B] encoded images -> [B, *output_shape] parsed, in order; B may be 0.

  An input that does not parse stops the call with an InvalidArgumentError
  '<what> input <i> of the batch: <reason>' (i 0-based; the first failing input).
  """
  if image_bytes.shape[0] == 0:  # statically empty: nothing to parse (or to trace)
    return tf.zeros([0, *output_shape], dtype)
  count = tf.shape(image_bytes)[0]

  def parse_all():
    positions, images, ok = parse_or_flag(parse_fn, image_bytes, output_shape, dtype,
                                          parallel=True).batch(
                                              tf.cast(count, tf.int64)).get_single_element()
    failed = tf.gather(positions, _first_failure(ok))
    check = tf.debugging.Assert(tf.reduce_all(ok), [tf.strings.join([
        f'{what} input ', tf.strings.as_string(failed), ' of the batch: ',
        describe_undecodable(image_bytes[failed])])])
    with tf.control_dependencies([check]):
      images = tf.identity(images)
    images.set_shape([None, *output_shape])
    return images

  return tf.cond(count > 0, parse_all, lambda: tf.zeros([0, *output_shape], dtype))


def check_pixels(pixels: tf.Tensor, what: str) -> tf.Tensor:
  """float [B, H, W, C] -> the same tensor once every value is finite and H, W >= 1.

  Otherwise an InvalidArgumentError '<what> input <i> of the batch has NaN or infinite pixel
  values' (the first such input), or one naming the empty height / width.
  """
  shape = tf.shape(pixels)
  finite = tf.reduce_all(tf.math.is_finite(pixels), axis=[1, 2, 3])
  bad = _first_failure(finite)
  checks = [
      tf.debugging.Assert(tf.logical_or(tf.equal(shape[0], 0),
                                        tf.minimum(shape[1], shape[2]) > 0), [
          tf.strings.join([f'{what} inputs are empty images (height ',
                           tf.strings.as_string(shape[1]), ', width ',
                           tf.strings.as_string(shape[2]), '); both must be at least 1'])]),
      tf.debugging.Assert(tf.reduce_all(finite), [tf.strings.join([
          f'{what} input ', tf.strings.as_string(bad),
          ' of the batch has NaN or infinite pixel values (expected RGB in [0, 255])'])]),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(pixels)
