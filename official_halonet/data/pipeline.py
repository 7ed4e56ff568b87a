"""The tf.data input pipeline for HaloNet / SASA image classification.

`build_dataset(config, input_context)` is a thin layer over Model Garden:

  Model Garden `core.input_reader.InputReader`: file matching, per-host sharding through
    `tf.distribute.InputContext`, file-level shuffling, interleave, shuffle buffer, cache,
    repeat, determinism options, prefetch.
  Model Garden `vision.dataloaders.classification_input.Decoder` / `Parser`: tf.Example parsing
    and the image transforms (Inception random-resized crop, flip, RandAugment / AutoAugment,
    center crop, resize, mean/std normalisation), and `vision.ops.augment.MixupAndCutmix`.
  Ours: every record carries its shard path and record index (`shards.ShardReader`); labels are
    shifted by `label_offset` and checked against `num_classes`; ImageNet-21k multi-label;
    JPEG records take Model Garden's fused decode-and-crop path while PNG / GIF (first frame) /
    BMP / WebP bytes and tiny images are decoded by `images.decode_rgb` and take its path for
    decoded pixels (grayscale and CMYK JPEGs decode to RGB on both); an undecodable image stops
    with the shard, record and reason named (or is skipped); eval batches are padded with masked
    examples so none is lost and shapes stay static.

Batch structure (B = per-replica batch size = global_batch_size / num_replicas_in_sync, static):

  training:  (images, labels)
     images  float32 (or `dtype`) [B, image_size, image_size, 3], normalised with ImageNet
             mean/std (Model Garden `preprocess_ops.normalize_image`).
     labels  int32 [B] class ids in 0..num_classes-1 (stored label - label_offset);
             float32 [B, num_classes] multi-hot when is_multilabel;
             float32 [B, num_classes] mixed, smoothed one-hot when mixup/cutmix is on.
  eval:      (images, {'labels': labels, 'mask': mask})
     images, labels as above (no mixup); padded examples have zero images and labels.
     mask    float32 [B]: 1.0 for a real example, 0.0 for padding. Use it as the sample weight
             of every metric. Each real example appears exactly once, in a deterministic order.

Training data repeats forever; eval data is one pass.
"""
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import tensorflow as tf

from official.core import input_reader
from official.vision.configs import common
from official.vision.dataloaders import classification_input
from official.vision.ops import augment
from official.vision.ops import preprocess_ops

from official_halonet.data import config as config_lib
from official_halonet.data import images
from official_halonet.data import records
from official_halonet.data import shards

# Keys of the decoded record dict flowing between Model Garden's stages.
IMAGE = 'image'
LABEL = 'label'
OK = 'ok'
MASK = 'mask'
LABELS = 'labels'


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


class LabelCheckingDecoder:
  """Parses the tf.Example of a provenance record and checks and shifts its label.

  Wraps Model Garden's `classification_input.Decoder`. Output dict:
    source, index: the record's shard path and index (see `shards`).
    image: the encoded image bytes (string scalar).
    label: int32 scalar (stored label - label_offset) or, multi-label, int32 [k] class ids.
  A stored label outside [label_offset, label_offset + num_classes) (or an empty multi-label
  list) stops the input with an InvalidArgumentError naming shard, record, label and range.
  """

  def __init__(self, image_key: str, label_key: str, label_offset: int, num_classes: int,
               is_multilabel: bool = False):
    self._image_key = image_key
    self._label_key = label_key
    self._offset = int(label_offset)
    self._num_classes = int(num_classes)
    self._is_multilabel = is_multilabel
    self._decoder = classification_input.Decoder(
        image_field_key=image_key, label_field_key=label_key, is_multilabel=is_multilabel)

  def decode(self, record: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    decoded = self._decoder.decode(record[shards.SERIALIZED])
    stored = decoded[self._label_key]
    if self._is_multilabel:
      if isinstance(stored, tf.sparse.SparseTensor):
        stored = tf.sparse.to_dense(stored, default_value=-1)
      low = tf.reduce_min(tf.concat([stored, [self._offset + self._num_classes]], 0))
      high = tf.reduce_max(tf.concat([stored, [self._offset - 1]], 0))
      in_range = tf.logical_and(
          tf.size(stored) > 0,
          tf.logical_and(low >= self._offset, high < self._offset + self._num_classes))
    else:
      in_range = tf.logical_and(stored >= self._offset,
                                stored < self._offset + self._num_classes)
    check = tf.debugging.Assert(in_range, [
        'Label out of range in shard', record[shards.SOURCE], 'record index',
        record[shards.INDEX], ': stored', self._label_key, '=', stored,
        f'is outside [{self._offset}, {self._offset + self._num_classes}) '
        f'(label_offset={self._offset}, num_classes={self._num_classes}). ImageNet-converter '
        'TFRecords store 1..1000 (label_offset=1), TFDS stores 0..999 (label_offset=0); '
        '-1 or an empty list means the record has no label feature.'], summarize=16)
    with tf.control_dependencies([check]):
      label = tf.cast(stored - self._offset, tf.int32)
    return {
        shards.SOURCE: record[shards.SOURCE],
        shards.INDEX: record[shards.INDEX],
        IMAGE: decoded[self._image_key],
        LABEL: label,
    }


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


def format_label(label: tf.Tensor, num_classes: int, is_multilabel: bool) -> tf.Tensor:
  """int32 class id scalar, or int32 [k] ids -> float32 [num_classes] multi-hot."""
  if not is_multilabel:
    return label
  hot = tf.scatter_nd(tf.expand_dims(label, 1), tf.ones_like(label, tf.float32), [num_classes])
  return tf.minimum(hot, 1.0)


def pad_and_batch_eval(dataset: tf.data.Dataset, batch_size: int,
                       num_batches: Optional[int]) -> tf.data.Dataset:
  """(image, {'labels','mask'}) examples -> static-shape batches, padding with mask 0.

  num_batches None: ceil(N / batch_size) batches, the last one padded. num_batches set:
  exactly that many batches; more than num_batches * batch_size real examples stops with an
  error (rather than dropping any).
  """
  image_spec, label_spec = dataset.element_spec
  padding = tf.data.Dataset.from_tensors((
      tf.zeros(image_spec.shape, image_spec.dtype),
      {LABELS: tf.zeros(label_spec[LABELS].shape, label_spec[LABELS].dtype),
       MASK: tf.constant(0.0)}))
  if num_batches is None:
    padded = dataset.concatenate(padding.repeat(batch_size - 1))
    return padded.batch(batch_size, drop_remainder=True)

  capacity = num_batches * batch_size

  def check_capacity(position, element):
    image, labels = element
    fits = tf.logical_or(position < capacity, tf.equal(labels[MASK], 0.0))
    check = tf.debugging.Assert(fits, [
        'This host has more than eval_num_batches * batch_size =', capacity,
        'eval examples; raise eval_num_batches.'])
    with tf.control_dependencies([check]):
      return position, (tf.identity(image), labels)

  padded = dataset.concatenate(padding.repeat()).take(capacity + 1).enumerate()
  padded = padded.map(check_capacity).filter(lambda position, _: position < capacity)
  return padded.map(lambda _, element: element).batch(batch_size, drop_remainder=True)


def build_dataset(config: config_lib.DataConfig,
                  input_context: Optional[tf.distribute.InputContext] = None
                  ) -> tf.data.Dataset:
  """Builds the training or eval `tf.data.Dataset` described by `config`.

  Args:
    config: the data settings (`config.DataConfig`); `is_training` selects training (shuffled,
      augmented, repeated) or eval (one deterministic pass, center crop, padded last batch).
    input_context: from `strategy.distribute_datasets_from_function`; selects this host's
      shards and the per-replica batch size. None: one pipeline, global batch size.
  Returns:
    A dataset of batches as described in the module docstring.
  """
  config_lib.validate_config(config)
  files = resolve_input_files(config)
  sizes = shards.shard_sizes(files) if config.check_shard_sizes else None
  shard_reader = shards.ShardReader(sizes)
  image_key, label_key = field_keys(config)
  decoder = LabelCheckingDecoder(image_key, label_key, config.label_offset,
                                 config.num_classes, config.is_multilabel)
  image_parser = ImageParser(config)
  is_training = bool(config.is_training)
  deterministic = config.deterministic if is_training else True
  num_classes, is_multilabel = config.num_classes, config.is_multilabel

  def transform_and_batch(dataset: tf.data.Dataset,
                          context: Optional[tf.distribute.InputContext]) -> tf.data.Dataset:
    batch_size = (context.get_per_replica_batch_size(config.global_batch_size)
                  if context else config.global_batch_size)
    dataset = dataset.map(
        lambda e: {**e, LABEL: format_label(e[LABEL], num_classes, is_multilabel)},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = parse_images(dataset, image_parser, config.guard_decode, config.on_bad_image,
                           deterministic)
    if is_training:
      dataset = dataset.map(lambda e: (e[IMAGE], e[LABEL]),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
      return dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(lambda e: (e[IMAGE], {LABELS: e[LABEL], MASK: tf.constant(1.0)}),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    num_batches = config.eval_num_batches
    if num_batches is not None and context is not None:
      # eval_num_batches counts eval steps; each step takes one batch per replica, and this
      # pipeline feeds num_replicas_in_sync / num_input_pipelines replicas.
      num_batches *= max(1, context.num_replicas_in_sync // context.num_input_pipelines)
    return pad_and_batch_eval(dataset, batch_size, num_batches)

  postprocess_fn = None
  if is_training:
    postprocess_fn = _mixup_cutmix(config)

  params = config.replace(input_path=files, tfds_name='', tfds_split='',
                          deterministic=deterministic, drop_remainder=True)
  reader = input_reader.InputReader(
      params,
      dataset_fn=shard_reader,
      decoder_fn=decoder.decode,
      transform_and_batch_fn=transform_and_batch,
      postprocess_fn=postprocess_fn)
  return reader.read(input_context=input_context)


def element_spec(config: config_lib.DataConfig, batch_size: int) -> Tuple[Any, Any]:
  """The `element_spec` of `build_dataset(config)` at a per-replica `batch_size`, with no files.

  What a compiled step takes (the batch structure of the module docstring), for tracing a step
  ahead of time (official_halonet.tpu); tests check it against real datasets.
  """
  images = tf.TensorSpec([batch_size, config.image_size, config.image_size, 3],
                         tf.dtypes.as_dtype(config.dtype))
  dense = config.is_multilabel or (config.is_training and _mixup_cutmix(config) is not None)
  labels = (tf.TensorSpec([batch_size, config.num_classes], tf.float32) if dense
            else tf.TensorSpec([batch_size], tf.int32))
  if config.is_training:
    return images, labels
  return images, {LABELS: labels, MASK: tf.TensorSpec([batch_size], tf.float32)}


def _mixup_cutmix(config: config_lib.DataConfig) -> Optional[Callable[..., Any]]:
  """Model Garden MixupAndCutmix from the alphas or the `mixup_and_cutmix` config, or None."""
  if config.mixup_and_cutmix is not None:
    m = config.mixup_and_cutmix
    return augment.MixupAndCutmix(
        num_classes=config.num_classes, mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha,
        prob=m.prob, switch_prob=m.switch_prob, label_smoothing=m.label_smoothing)
  if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
    return augment.MixupAndCutmix(
        num_classes=config.num_classes, mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha, label_smoothing=config.mixup_label_smoothing)
  return None
