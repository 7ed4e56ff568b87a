"""Eval batches: every real example exactly once, in static-shape batches padded with masked
examples.

  pad_and_batch_eval(dataset, batch_size, num_batches)   (image, {LABELS, MASK}) examples ->
      batches of batch_size; padding examples have zero image and labels and mask 0.0. With
      num_batches None, ceil(N / batch_size) batches; set, exactly that many, and more real
      examples than fit stop the input with an error instead of being dropped
"""
from typing import Optional

import tensorflow as tf

from official_halonet.data.element_keys import LABELS, MASK


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
