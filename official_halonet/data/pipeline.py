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

The stages are modules of their own: `input_files` (which files), `record_labels` (label check
and format), `image_parser` (decode and transform), `eval_batching` (padded eval batches), with
the element dicts' keys in `element_keys`; this module wires them into Model Garden's
`InputReader`, and `element_spec` gives the batch structure without reading any file.
"""
from typing import Any, Callable, Optional, Tuple

import tensorflow as tf

from official.core import input_reader
from official.vision.ops import augment

from official_halonet.data import config as config_lib
from official_halonet.data import shards
from official_halonet.data.element_keys import IMAGE, LABEL, LABELS, MASK
from official_halonet.data.eval_batching import pad_and_batch_eval
from official_halonet.data.image_parser import ImageParser, parse_images
from official_halonet.data.input_files import field_keys, resolve_input_files
from official_halonet.data.record_labels import LabelCheckingDecoder, format_label


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
