"""Blocked layout helpers: cut a feature map into b×b blocks and (b+2h)×(b+2h) halo windows.

Only pad / reshape / slice / concat are used (no image patch-extraction op), so XLA compiles the
window formation to plain copies on TPU, GPU and CPU, and every shape may be unknown (None) at trace
time. All tensors are channels-last.

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


def _windows_along(x: tf.Tensor, axis: int, block: int, halo: int) -> tf.Tensor:
  """Splits `axis` (length n·b) into n overlapping windows of b + 2h: [..., n, b + 2h, ...].

  Window t covers positions t·b - h .. t·b + b + h - 1 of the axis; positions outside the axis are
  zero. The axis is zero-padded by m = ceil(h / b) whole blocks on each side and cut into n + 2m
  blocks; window t is then the last h - (m - 1)·b positions of block t, blocks t + 1 .. t + 2m - 1
  whole and the first h - (m - 1)·b positions of block t + 2m (in padded block numbering), so each
  window is built at its exact width. For h <= b (every published model): the last h positions of
  the block before, the block, the first h of the block after.
  """
  shape = dims(x)
  n = shape[axis] // block
  extra = ceil_div(halo, block)  # m
  if extra:
    paddings = [[0, 0]] * len(shape)
    paddings[axis] = [extra * block, extra * block]
    x = tf.pad(x, paddings)
  x = tf.reshape(x, shape[:axis] + [n + 2 * extra, block] + shape[axis + 1:])
  if not extra:
    return x
  lead = (slice(None),) * axis
  first, end = extra * block - halo, extra * block + block + halo  # the window in blocks t .. t + 2m
  pieces = []
  for j in range(2 * extra + 1):  # the part of neighbour j inside the window
    start, stop = max(first - j * block, 0), min(end - j * block, block)
    if start < stop:
      pieces.append(x[lead + (slice(j, j + n), slice(start, stop))])
  return tf.concat(pieces, axis=axis + 1)  # [..., n, b + 2h, ...]


def halo_windows(x: tf.Tensor, block: int, halo: int) -> tf.Tensor:
  """[B, n_h·b, n_w·b, C] -> [B, n_h, n_w, w·w, C] with w = b + 2h, zeros outside the map.

  Window (t, u) holds rows t·b - h .. t·b + b + h - 1 and columns u·b - h .. u·b + b + h - 1, row-major.
  """
  batch, _, width, channels = dims(x)
  win = block + 2 * halo
  x = _windows_along(x, 1, block, halo)  # [B, n_h, w, W, C]
  n_h = dims(x)[1]
  # B and n_h share one axis for the column pass, so no tensor exceeds rank 5 (LiteRT's
  # StridedSlice limit); merging leading axes is free.
  x = tf.reshape(x, [batch * n_h, win, width, channels])
  x = _windows_along(x, 2, block, halo)  # [B·n_h, w, n_w, w, C]
  n_w = dims(x)[2]
  x = tf.transpose(x, [0, 2, 1, 3, 4])
  return tf.reshape(x, [batch, n_h, n_w, win * win, channels])
