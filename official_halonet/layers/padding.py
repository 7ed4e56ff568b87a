"""PyTorch-style explicit padding, for models whose weights were trained in PyTorch.

TensorFlow's 'SAME' pads a strided k×k window asymmetrically (the extra pixel at the bottom/right
for even inputs); PyTorch convolutions and pools pad p = ((s - 1) + (k - 1)) // 2 on every side.
The two sample different pixels, so weights trained with one give other numbers with the other.
`Pad2D` pads [B, H, W, C] by p on each side with a constant (0 before a convolution, -inf before a
max-pool, which PyTorch's max-pool padding amounts to); the conv / pool then runs 'valid'.
"""
import tensorflow as tf
import tf_keras


def symmetric_padding(kernel: int, strides: int) -> int:
  """PyTorch's default padding on each side of a k×k window of stride s (dilation 1)."""
  return ((strides - 1) + (kernel - 1)) // 2


@tf_keras.utils.register_keras_serializable(package="HaloNet")
class Pad2D(tf_keras.layers.Layer):
  """[B, H, W, C] -> [B, H + 2p, W + 2p, C], the new border filled with `value`."""

  def __init__(self, pad: int, value: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.pad = int(pad)
    self.value = float(value)

  def call(self, x: tf.Tensor) -> tf.Tensor:
    p = self.pad
    return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=tf.cast(self.value,
                                                                              x.dtype))

  def compute_output_shape(self, input_shape):
    shape = tf.TensorShape(input_shape).as_list()
    grow = [None if d is None else d + 2 * self.pad for d in shape[1:3]]
    return tf.TensorShape([shape[0]] + grow + [shape[3]])

  def get_config(self):
    config = super().get_config()
    config.update(pad=self.pad, value=self.value)
    return config
