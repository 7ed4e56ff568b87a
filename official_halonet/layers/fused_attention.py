"""Halo attention's core through the fused kernel of kernels/halo_attention.py, for TensorFlow.

    out = softmax(scale · q·kᵀ + q·T[row i, u] + q·T[column j, c]) · v      per block and head

the map of block_attention.attend (without a mask, or with SASA's centred-window one) with the
position factors of relative_position.relative_terms, computed by one Pallas kernel per call that
reads each block's window straight from the zero-padded k/v map and keeps the position terms and
the logits on chip.
The kernel comes to TensorFlow as a serialized StableHLO module run by XlaCallModule
(kernels/library.py makes and caches it); its gradient is a second kernel, whose per-window
gradients are added into the map's here.

Platforms: 'tpu' (a Mosaic kernel: only the TPU compiler runs it; `--mode=tpu_check` compiles it on
a CPU host) and 'cpu' (the same kernel body in Pallas's interpreter: slow, for checking the fused
path against the XLA one on a CPU). Shapes must be static: one module per shape.

A layer calls `attend_maps` with its query map, its k/v map as its projection writes it, its
tables and its Core (`layer_core`); everything about the kernel's layout (the map's padding, q and
the output block by block or as maps) stays in this module. Which calls take the kernel: a layer's
setting (`SETTINGS`) forces it or XLA's path; a layer left unset asks `platform_for`, which says
the kernel only inside `kernel_by_default` (a TPU run, after training/fused_check.py has tried each
shape on the chip) and only for the shapes that check did not reject. `attend` is the kernel's own
call, on arrays already in the Core's shapes (kernels/core.py says what each channel and row
holds; q and the map in one float dtype, the tables float32):
  q  [B, X·bq, Y·bq, N·D]   kv_map  [B, X·b + 2h, Y·b + 2h + R - w, N·(D + Dv)]
  tables  [2·bq·w, D]   ->  [B, X·bq, Y·bq, N·Dv]
or, where not `core.map_layout`, q [Z, Q, N·D] -> [Z, Q, N·Dv], block by block.
"""
import contextlib
import dataclasses
from typing import FrozenSet, Iterable, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.ops import gen_xla_ops

from official_halonet.kernels import library
from official_halonet.kernels.core import Core
from official_halonet.kernels.core import DoesNotFit
from official_halonet.layers import blocking

# The switch's values, HaloNetConfig.fused_attention and HaloAttention(fused_attention=...): None
# (the run's default: `platform_for`), 'none' (XLA's attention) or the platform a kernel is made
# for, forced.
PLATFORMS = library.PLATFORMS  # what a kernel is made for
SETTINGS = (None, "none") + PLATFORMS
INPUTS = ("q", "kv_map", "tables")


@dataclasses.dataclass(frozen=True)
class _Default:
  platform: str
  trusted: Optional[FrozenSet[str]]  # the shape_key()s that take the kernel; None: every shape


_DEFAULT: List[Optional[_Default]] = [None]


@contextlib.contextmanager
def kernel_by_default(platform: str, trusted: Optional[Iterable[str]] = None):
  """Within it, layers whose setting is None take the kernel on `platform` for the shapes the
  kernel computes whose shape_key() is in `trusted` (a TPU run's default, set by its runner for
  the shapes training/fused_check.py passed), or for every such shape when `trusted` is None
  (tpu_check, which compiles and runs nothing)."""
  if platform not in PLATFORMS:
    raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
  outer = _DEFAULT[0]
  _DEFAULT[0] = _Default(platform, None if trusted is None else frozenset(trusted))
  try:
    yield
  finally:
    _DEFAULT[0] = outer


def platform_for(setting: Optional[str], key: str) -> Optional[str]:
  """The platform whose kernel computes a call of shape_key `key` for a layer whose setting is
  `setting` (one of SETTINGS), or None for XLA's path."""
  if setting is not None:
    return None if setting == "none" else setting
  default = _DEFAULT[0]
  if default is None or (default.trusted is not None and key not in default.trusted):
    return None
  return default.platform


def shape_key(core: Core, dtype: tf.DType) -> str:
  """What identifies a call's kernel apart from its batch, in words (a fused_check verdict's key;
  the kernel's grid step, and so whether it compiles and what it computes, does not depend on
  the batch)."""
  return (f"{core.blocks_x * core.query_side}x{core.blocks_y * core.query_side} queries in "
          f"blocks of {core.query_side}, window {core.window} (block {core.block}, halo "
          f"{core.halo}{', centred' if core.centered else ''}), {core.heads} heads of "
          f"{core.key_width}+{core.value_width} channels, {dtype.name}")


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
  if platform not in library.PLATFORMS:
    raise ValueError(f"platform must be one of {library.PLATFORMS}, got {platform!r}")
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


def layer_core(q_shape: tf.TensorShape, kv_channels: int, *, block: int, halo: int, stride: int,
               heads: int, scale: float, position_width: int, centered: bool = False) -> Core:
  """The Core of a call of `attend_maps` on q [B, X·bq, Y·bq, N·D] (bq = block / stride; a static
  shape) and a k/v map of `kv_channels` = N·(D + Dv) channels: blocks of `block` with a halo of
  `halo`, query stride `stride`, N = `heads`; `scale` multiplies q·k; `position_width`: channels
  of q each table row meets (for the FLOP count only); `centered`: SASA's window (each query
  attends to the keys within h rows and columns of itself, stride 1)."""
  batch, rows, cols, key_channels = q_shape.as_list()
  bq = block // stride
  return Core(batch=batch, blocks_x=rows // bq, blocks_y=cols // bq, block=block, halo=halo,
              queries=bq * bq, heads=heads, key_width=key_channels // heads,
              value_width=(kv_channels - key_channels) // heads, scale=scale,
              position_width=position_width, centered=centered)


def fits(core: Core, dtype: tf.DType) -> bool:
  """Whether the kernel's grid step for `core` fits the TPU compiler's VMEM."""
  try:
    core.check_fits(dtype.size)
  except DoesNotFit:
    return False
  return True


def _padded_map(kv: tf.Tensor, core: Core) -> tf.Tensor:
  """kv [B, H, W, C] zero-padded by h, up to whole blocks, to whole window rows of core.row
  pixels and to core.kv_channels: core.shapes()["kv_map"] (the pad pass is also the relayout the
  kernel needs: docs/tpu_attention_bytes.md, step 5)."""
  _, height, width, channels = kv.shape.as_list()
  _, padded_height, padded_width, padded_channels = core.shapes()["kv_map"]
  h = core.halo
  return tf.pad(kv, [[0, 0], [h, padded_height - height - h], [h, padded_width - width - h],
                     [0, padded_channels - channels]])


def attend_maps(q: tf.Tensor, kv: tf.Tensor, tables: tf.Tensor, core: Core,
                platform: str) -> tf.Tensor:
  """A halo layer's attention core by the kernel, from the layer's own maps.

  Args:
    q: [B, X·bq, Y·bq, N·D] the query map, padded to whole blocks of bq = block / stride rows and
      columns, unscaled, in the compute dtype; static shape.
    kv: [B, H, W, N·(D + Dv)] keys then values of every input pixel, unpadded (H <= X·b,
      W <= Y·b), q's dtype.
    tables: [2·bq·w, D] float32, relative_position.window_tables (times the layer's position
      scale).
    core: `layer_core` of q's shape, kv's channels and the layer's settings.
    platform: 'tpu' or 'cpu' (see the module docstring).

  Returns:
    [B, X·bq, Y·bq, N·Dv] in q's dtype. Raises ValueError, naming the fused_attention setting,
    when the kernel's grid step cannot fit the TPU compiler's VMEM.
  """
  try:
    core.check_fits(q.dtype.size)
  except DoesNotFit as e:
    raise ValueError(f"{e}; use fused_attention='none' for this model") from None
  kv_map = _padded_map(kv, core)
  if core.map_layout:  # the kernel reads q and writes its output as maps
    return attend(q, kv_map, tables, core, platform)
  bq = core.query_side
  out = attend(tf.reshape(blocking.to_blocks(q, bq), core.shapes()["q"]), kv_map, tables, core,
               platform)
  return blocking.from_blocks(
      tf.reshape(out, [core.batch, core.blocks_x, core.blocks_y, core.queries, -1]), bq)
