"""Halo attention's core through the fused kernel of kernels/halo_attention.py, for TensorFlow.

    out = softmax(scale · q·kᵀ + q·T[row i, u] + q·T[column j, c]) · v      per block and head

the map of block_attention.attend (without a mask) with the position factors of
relative_position.relative_terms, computed by one Pallas kernel per call that reads each block's
window straight from the zero-padded k/v map and keeps the position terms and the logits on chip.
The kernel comes to TensorFlow as a serialized StableHLO module run by XlaCallModule
(kernels/library.py makes and caches it); its gradient is a second kernel, whose per-window
gradients are added into the map's here.

Platforms: 'tpu' (a Mosaic kernel: only the TPU compiler runs it; `--mode=tpu_check` compiles it on
a CPU host) and 'cpu' (the same kernel body in Pallas's interpreter: slow, for checking the fused
path against the XLA one on a CPU). Shapes must be static: one module per shape.

Shapes (q and the map in one float dtype, the tables float32; kernels/core.py says what each
channel and row holds):
  q  [B, X·bq, Y·bq, N·D]   kv_map  [B, X·b + 2h, Y·b + 2h + R - w, N·(D + Dv)]
  tables  [2·bq·w, D]   ->  [B, X·bq, Y·bq, N·Dv]
or, where not `core.map_layout`, q [Z, Q, N·D] -> [Z, Q, N·Dv], block by block.
"""
import dataclasses
from typing import List

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.ops import gen_xla_ops

from official_halonet.kernels import library
from official_halonet.kernels.core import Core

PLATFORMS = library.PLATFORMS
INPUTS = ("q", "kv_map", "tables")


def _call(kind: str, core: Core, platform: str, args: List[tf.Tensor], outputs: List[str]):
  """The kernel `kind` on `args` through XlaCallModule; returns the arrays named by `outputs`."""
  dtype = args[0].dtype
  data, version = library.module(kind, dataclasses.asdict(core), dtype.name, platform)
  return gen_xla_ops.xla_call_module(
      args, version=version, module=data,
      Sout=[tf.TensorShape(core.table_steps(dtype.size) if name == "tables"
                           else core.shapes()[name]) for name in outputs],
      Tout=[tf.float32 if name == "tables" else dtype for name in outputs],
      platforms=[platform.upper()],
      # A TPU module is traced (and compiled for the TPU) on a CPU host by tpu_check.
      disabled_checks=["platform"] if platform == "tpu" else [])


def window_pixels(core: Core) -> np.ndarray:
  """[Z·w·R] int32: the pixels each block's window rows are read from (R per row from the row tile
  holding the window's first pixel, row-major), as indices of kv_map's pixels."""
  _, height, width, _ = core.shapes()["kv_map"]
  b = core.block
  image = np.arange(core.batch)[:, None, None, None, None] * height * width
  row = (np.arange(core.blocks_x) * b)[None, :, None, None, None] + np.arange(core.window)[:, None]
  starts = np.array([core.window_start(y) for y in range(core.blocks_y)])
  col = starts[None, None, :, None, None] + np.arange(core.row)
  return (image + row * width + col).reshape(-1).astype(np.int32)


def _map_gradient(core: Core, windows: tf.Tensor) -> tf.Tensor:
  """kv_map's gradient: the windows' gradients [Z, w·R, C] added into the pixels they were read
  from (the filler keys' gradients are zero)."""
  batch, height, width, channels = core.shapes()["kv_map"]
  flat = tf.math.unsorted_segment_sum(tf.reshape(windows, [-1, channels]), window_pixels(core),
                                      batch * height * width)
  return tf.reshape(flat, [batch, height, width, channels])


def attend(q: tf.Tensor, kv_map: tf.Tensor, tables: tf.Tensor, core: Core, platform: str):
  """out, shaped `core.shapes()["out"]` (see the module docstring); differentiable in q, kv_map
  and tables."""
  if platform not in PLATFORMS:
    raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
  for name, tensor in zip(INPUTS, (q, kv_map, tables)):
    if tensor.shape.as_list() != core.shapes()[name]:
      raise ValueError(f"fused attention: {name} has shape {tensor.shape}, the core {core} "
                       f"needs {core.shapes()[name]}")
  if tables.dtype != tf.float32:
    raise ValueError(f"fused attention: tables must be float32, got {tables.dtype.name}")

  @tf.custom_gradient
  def fused(q, kv_map, tables):
    out = _call("forward", core, platform, [q, kv_map, tables], ["out"])[0]

    def gradient(dout):
      dq, dwindows, dtables = _call("backward", core, platform,
                                    [q, kv_map, tables, tf.cast(dout, q.dtype)],
                                    ["q", "windows", "tables"])
      return dq, _map_gradient(core, dwindows), tf.reduce_sum(dtables, axis=0)  # over the steps

    return out, gradient

  return fused(q, kv_map, tables)
