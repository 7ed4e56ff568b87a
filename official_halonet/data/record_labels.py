"""A record's label: checked against the configured classes, then put in the form batches carry.

  LabelCheckingDecoder(image_key, label_key, label_offset, num_classes, is_multilabel)
      .decode(provenance record) -> {source, index, IMAGE: encoded bytes, LABEL: class id(s)}
      the stored label shifted by label_offset; one outside the classes (or an empty multi-label
      list) stops the input with an InvalidArgumentError naming shard, record, label and range
  format_label(label, num_classes, is_multilabel)   a class id is kept; a multi-label list of ids
      becomes float32 [num_classes] multi-hot
"""
from typing import Dict

import tensorflow as tf

from official.vision.dataloaders import classification_input

from official_halonet.data import shards
from official_halonet.data.element_keys import IMAGE, LABEL


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


def format_label(label: tf.Tensor, num_classes: int, is_multilabel: bool) -> tf.Tensor:
  """int32 class id scalar, or int32 [k] ids -> float32 [num_classes] multi-hot."""
  if not is_multilabel:
    return label
  hot = tf.scatter_nd(tf.expand_dims(label, 1), tf.ones_like(label, tf.float32), [num_classes])
  return tf.minimum(hot, 1.0)
