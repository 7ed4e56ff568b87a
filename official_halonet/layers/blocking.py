"""Blocked layout helpers: cut a feature map into b×b blocks and (b+2h)×(b+2h) halo windows.

Blocks use pad / reshape / transpose; halo windows one pad and one gather of whole pixels (no image
patch-extraction op), which XLA compiles to a row gather on TPU, GPU and CPU. Every shape may be
unknown (None) at trace time. All tensors are channels-last.

  pad_to_multiple  [B, H, W, C]              -> [B, ceil(H/b)·b, ceil(W/b)·b, C]   (zeros bottom/right)
  to_blocks        [B, n_h·b, n_w·b, C]      -> [B, n_h, n_w, b·b, C]
  from_blocks      [B, n_h, n_w, b·b, C]     -> [B, n_h·b, n_w·b, C]
  halo_windows     [B, n_h·b, n_w·b, C]      -> [B, n_h, n_w, (b+2h)·(b+2h), C]
"""
from typing import List, Union

import tensorflow as tf

Dim = Union[int, tf.Tensor]


def dims(x: tf.Tensor) -> List[Dim]:
  """The shape of `x` as a list: Python ints where static, scalar tensors where not."""
  static = x.shape.as_list()
  dynamic = tf.shape(x)
  return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def ceil_div(a: Dim, b: int) -> Dim:
  return -(-a // b)


def pad_to_multiple(x: tf.Tensor, multiple: int) -> tf.Tensor:
  """Zero-pads H and W of [B, H, W, C] at the bottom / right up to multiples of `multiple`."""
  _, height, width, _ = dims(x)
  pad_h = ceil_div(height, multiple) * multiple - height
  pad_w = ceil_div(width, multiple) * multiple - width
  if isinstance(pad_h, int) and isinstance(pad_w, int) and pad_h == 0 and pad_w == 0:
    return x
  return tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])


def to_blocks(x: tf.Tensor, block: int) -> tf.Tensor:
  """[B, n_h·b, n_w·b, C] -> [B, n_h, n_w, b·b, C]; pixel (i, j) of a block is at index i·b + j."""
  batch, height, width, channels = dims(x)
  n_h, n_w = height // block, width // block
  x = tf.reshape(x, [batch, n_h, block, n_w, block, channels])
  x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
  return tf.reshape(x, [batch, n_h, n_w, block * block, channels])


def from_blocks(x: tf.Tensor, block: int) -> tf.Tensor:
  """Inverse of `to_blocks`: [B, n_h, n_w, b·b, C] -> [B, n_h·b, n_w·b, C]."""
  batch, n_h, n_w, _, channels = dims(x)
  x = tf.reshape(x, [batch, n_h, n_w, block, block, channels])
  x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
  return tf.reshape(x, [batch, n_h * block, n_w * block, channels])


def halo_windows(x: tf.Tensor, block: int, halo: int) -> tf.Tensor:
  """[B, n_h·b, n_w·b, C] -> [B, n_h, n_w, w·w, C] with w = b + 2h, zeros outside the map.

  Window (t, u) holds rows t·b - h .. t·b + b + h - 1 and columns u·b - h .. u·b + b + h - 1, row-major.
  One gather of whole C-wide pixels from the zero-padded map flattened to [B, pixels, C], so no
  tensor above rank 5 and no transposed copy of the windows is formed.
  """
  batch, height, width, channels = dims(x)
  n_h, n_w = height // block, width // block
  win = block + 2 * halo
  if halo:
    x = tf.pad(x, [[0, 0], [halo, halo], [halo, halo], [0, 0]])
  offsets = tf.range(win)
  rows = tf.range(n_h)[:, None, None, None] * block + offsets[None, None, :, None]
  cols = tf.range(n_w)[None, :, None, None] * block + offsets[None, None, None, :]
  index = tf.reshape(rows * (width + 2 * halo) + cols, [-1])  # [n_h·n_w·w·w] flat pixels
  x = tf.gather(tf.reshape(x, [batch, -1, channels]), index, axis=1)
  return tf.reshape(x, [batch, n_h, n_w, win * win, channels])
