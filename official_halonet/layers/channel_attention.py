"""ECA channel attention (Wang et al., "ECA-Net", CVPR 2020), as timm's eca_halonext26ts uses it.

    y = x · sigmoid(conv1d_k(mean_{H,W} x))      [B, H, W, C] -> [B, H, W, C]

The 1-D convolution runs along the channel axis of the pooled [B, C] vector (one filter, no bias,
zero padding (k - 1) / 2 on each side). Its width k grows with log2(C):
t = floor(|log2(C) + 1| / 2), k = t if t is odd else t + 1, and at least 3.
"""
import math
from typing import Any

import tensorflow as tf
import tf_keras


def eca_kernel_size(channels: int) -> int:
  """The ECA kernel width for `channels` channels (64 -> 3, 128 .. 1023 -> 5)."""
  t = int(abs(math.log2(channels) + 1) / 2)
  return max(t if t % 2 else t + 1, 3)


@tf_keras.utils.register_keras_serializable(package="HaloNet")
class EfficientChannelAttention(tf_keras.layers.Layer):
  """Scales each channel by a sigmoid gate computed from its neighbours' global means.

  Args:
    kernel_initializer: for the 1-D convolution's [k, 1, 1] kernel.
  """

  def __init__(self, kernel_initializer: Any = "VarianceScaling", **kwargs):
    super().__init__(**kwargs)
    self._kernel_initializer = kernel_initializer

  def build(self, input_shape):
    channels = int(input_shape[-1])
    self.conv = tf_keras.layers.Conv1D(1, eca_kernel_size(channels), padding="same",
                                       use_bias=False, name="conv", dtype=self.dtype_policy,
                                       kernel_initializer=self._kernel_initializer)
    self.conv.build([None, channels, 1])
    super().build(input_shape)

  def call(self, x: tf.Tensor) -> tf.Tensor:
    pooled = tf.reduce_mean(x, axis=[1, 2])[:, :, None]  # [B, C, 1]
    gate = tf.sigmoid(self.conv(pooled))[:, None, :, 0]  # [B, 1, C]
    return x * gate[:, :, None, :]

  def get_config(self):
    config = super().get_config()
    config.update(kernel_initializer=tf_keras.initializers.serialize(
        tf_keras.initializers.get(self._kernel_initializer)))
    return config
