"""Halo attention's core through the fused kernel of kernels/halo_attention.py, for TensorFlow.

    out = softmax(scale · q·kᵀ + rows[u] + cols[c]) · v      per block and head

the map of block_attention.attend (without a mask), computed by one Pallas kernel per call that
keeps the logits on chip. The kernel comes to TensorFlow as a serialized StableHLO module run by
XlaCallModule (kernels/library.py makes and caches it), with a second kernel as its gradient.

Platforms: 'tpu' (a Mosaic kernel: only the TPU compiler runs it; `--mode=tpu_check` compiles it on
a CPU host) and 'cpu' (the same kernel body in Pallas's interpreter: slow, for checking the fused
path against the XLA one on a CPU). Shapes must be static: one module per shape.

Shapes (all one float dtype; kernels/core.py says what each channel and row holds):
  q    [Z, Q, N·D]   kv  [Z, K, N·D + N·Dv]   pos  [Z, Q, 2·N·w]   ->   [Z, Q, N·Dv]
"""
import dataclasses
from typing import List

import tensorflow as tf
from tensorflow.compiler.tf2xla.ops import gen_xla_ops

from official_halonet.kernels import library
from official_halonet.kernels.core import Core

PLATFORMS = library.PLATFORMS


def _call(kind: str, core: Core, platform: str, args: List[tf.Tensor], outputs: List[List[int]]):
  """The kernel `kind` on `args` through XlaCallModule."""
  dtype = args[0].dtype
  data, version = library.module(kind, dataclasses.asdict(core), dtype.name, platform)
  return gen_xla_ops.xla_call_module(
      args, version=version, module=data, Sout=[tf.TensorShape(s) for s in outputs],
      Tout=[dtype] * len(outputs), platforms=[platform.upper()],
      # A TPU module is traced (and compiled for the TPU) on a CPU host by tpu_check.
      disabled_checks=["platform"] if platform == "tpu" else [])


def attend(q: tf.Tensor, kv: tf.Tensor, pos: tf.Tensor, core: Core, platform: str) -> tf.Tensor:
  """out [Z, Q, N·Dv] (see the module docstring); differentiable in q, kv and pos."""
  if platform not in PLATFORMS:
    raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
  shapes = core.shapes()
  for name, tensor, shape in zip(("q", "kv", "pos"), (q, kv, pos), shapes):
    if tensor.shape.as_list() != shape:
      raise ValueError(f"fused attention: {name} has shape {tensor.shape}, the core {core} "
                       f"needs {shape}")

  @tf.custom_gradient
  def fused(q, kv, pos):
    out = _call("forward", core, platform, [q, kv, pos], shapes[3:])[0]

    def gradient(dout):
      return _call("backward", core, platform, [q, kv, pos, tf.cast(dout, q.dtype)], shapes[:3])

    return out, gradient

  return fused(q, kv, pos)
