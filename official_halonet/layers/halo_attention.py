"""Blocked local self-attention with halos (HaloNet, Vaswani et al., CVPR 2021, eq. 2-3).

For the output at pixel (i, j), with N(i, j) the (b + 2h)² window of the b×b block holding (i, j):

    y_ij = sum_{(a,c) in N(i,j)} softmax_ac( s_qk · q_ij·k_ac + s_pos · (q_ij·r_h[a-i] + q_ij·r_w[c-j]) ) v_ac
    q = x W_Q,  k = x W_K,  v = x W_V          (1×1 projections, no bias; N heads of D channels)

s_qk = D^-1/2. s_pos is 1 by default (the position term unscaled, as in timm's HaloNet) and D^-1/2
with `scale_rel_logits=True`. k and v are projected before zero padding, so keys and values outside
the image are exactly zero (they still take part in the softmax unless `mask_out_of_image`).

Shapes: [B, H, W, C] -> [B, ceil(H/s), ceil(W/s), value_dim]; B, H, W may be None when traced.
H and W need not be multiples of b: the map is padded up and the output cropped back, so the output
has the size a 'SAME' convolution of stride s would give.

Downsampling (stride s > 1):
  * b divisible by s: queries are subsampled, q at rows/columns 0, s, 2s, ... of each block, while
    keys and values keep the stride-1 window, so each block yields (b/s)² outputs.
  * otherwise, or with downsample='avg_pool': stride-1 attention followed by s×s average pooling with
    stride s ('SAME' padding), the downsampling of SASA.

Window shape: 'block' attends to the whole (b + 2h)² window (HaloNet, unmasked by default);
'centered' masks it to the (2h + 1)² window centred on each query (SASA's k×k neighbourhood).
Relative positions: see relative_position.py ('factorized' HaloNet, 'split' SASA, or 'none').
A strided layer indexes its tables by each query's input position s·i' ('input', the default) or,
with query_positions='subsampled', by i' as timm does (for weights imported from timm).
Logits and softmax are computed in float32 whatever the layer's compute dtype; under mixed_bfloat16
the logits and position terms are stored in bfloat16 between the q·k product and the softmax (max,
exp and sum stay float32; see block_attention.py for the error bound).
"""
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from official_halonet.layers import block_attention
from official_halonet.layers import blocking
from official_halonet.layers import fused_attention as fused_lib
from official_halonet.layers import recompute as recompute_lib
from official_halonet.layers import relative_position

WINDOWS = ("block", "centered")
DOWNSAMPLES = ("auto", "avg_pool")
QUERY_POSITIONS = ("input", "subsampled")


def _positive_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def _fresh(module, identifier):
  """A new initializer object for each variable (a shared one would give identical tables)."""
  if isinstance(identifier, tf_keras.initializers.Initializer):
    identifier = tf_keras.initializers.serialize(identifier)
  return module.get(identifier)


def _one_of(name: str, value: Any, allowed) -> str:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
  return value


def query_stride(block_size: int, strides: int, downsample: str) -> int:
  """Stride of the subsampled queries: s when every block holds whole s×s cells and downsample is
  'auto', else 1 (stride-1 attention, then s×s average pooling)."""
  if strides > 1 and downsample == "auto" and block_size % strides == 0:
    return strides
  return 1


@tf_keras.utils.register_keras_serializable(package="HaloNet")
class HaloAttention(tf_keras.layers.Layer):
  """Multi-head blocked local self-attention with halo (see module docstring for the equation).

  Args:
    num_heads: N, heads.
    key_dim: total query/key width over all heads (N·D); must be divisible by `num_heads`.
    value_dim: total value (= output) width; divisible by `num_heads`. Defaults to `key_dim`.
    block_size: b, side of the query blocks.
    halo_size: h, pixels of halo on each side of a block.
    strides: s, output stride (1, or the downsampling of the first block of a stage).
    downsample: 'auto' (subsampled queries when b % s == 0, else average pooling) or 'avg_pool'.
    window: 'block' or 'centered' (see module docstring).
    mask_out_of_image: mask keys outside the image (zero padding) out of the softmax.
    rel_pos: 'factorized', 'split' or 'none'.
    scale_rel_logits: scale the relative-position term by D^-1/2 like the content term.
    kernel_initializer, kernel_regularizer: for the q, k, v projections.
    rel_pos_initializer: for the relative-position tables (default normal, stddev D^-1/2).
    query_positions: 'input' or 'subsampled': which row of a strided query indexes the tables.
    recompute: in training, keep only the layer's input for the backward pass and recompute the
      windows, logits and softmax there (recompute.py, which XLA cannot undo): less memory for
      more time, the same results (measured in docs/cpu_speed.md).
    fused_attention: 'tpu' (one Pallas kernel per layer that keeps the logits on chip; TPU only:
      fused_attention.py), 'cpu' (that kernel interpreted, for checking it on a CPU), 'none'
      (XLA computes the softmax attention) or None: the run's default (fused_attention.
      platform_for: the kernel in a TPU run for the shapes checked on its chip, XLA's path
      elsewhere and for what the kernel does not compute); HaloNetConfig.fused_attention. The
      kernel needs block windows (or centred ones at stride 1), no mask of keys outside the
      image, position terms and static shapes (elsewhere XLA computes the same map).
      `from_config` also reads it under its former name, fused_core.
  """

  def __init__(self,
               num_heads: int,
               key_dim: int,
               value_dim: Optional[int] = None,
               block_size: int = 8,
               halo_size: int = 3,
               strides: int = 1,
               downsample: str = "auto",
               window: str = "block",
               mask_out_of_image: bool = False,
               rel_pos: str = "factorized",
               scale_rel_logits: bool = False,
               kernel_initializer: Any = "he_normal",
               kernel_regularizer: Any = None,
               rel_pos_initializer: Any = None,
               query_positions: str = "input",
               recompute: bool = False,
               fused_attention: Optional[str] = None,
               **kwargs):
    super().__init__(**kwargs)
    self.num_heads = _positive_int("num_heads", num_heads, 1)
    self.key_dim = _positive_int("key_dim", key_dim, 1)
    self.value_dim = _positive_int("value_dim", key_dim if value_dim is None else value_dim, 1)
    self.block_size = _positive_int("block_size", block_size, 1)
    self.halo_size = _positive_int("halo_size", halo_size, 0)
    self.strides = _positive_int("strides", strides, 1)
    self.downsample = _one_of("downsample", downsample, DOWNSAMPLES)
    self.window = _one_of("window", window, WINDOWS)
    self.mask_out_of_image = bool(mask_out_of_image)
    self.rel_pos = _one_of("rel_pos", rel_pos, relative_position.REL_POS_MODES)
    self.scale_rel_logits = bool(scale_rel_logits)
    self.query_positions = _one_of("query_positions", query_positions, QUERY_POSITIONS)
    self.recompute = bool(recompute)
    self.fused_attention = _one_of("fused_attention", fused_attention, fused_lib.SETTINGS)
    for name, width in (("key_dim", self.key_dim), ("value_dim", self.value_dim)):
      if width % self.num_heads:
        raise ValueError(f"{name}={width} is not divisible by num_heads={self.num_heads}.")
    self.head_dim = self.key_dim // self.num_heads
    if self.rel_pos == "split" and self.head_dim % 2:
      raise ValueError(f"rel_pos='split' gives half of each head's channels to rows and half to "
                       f"columns, so key_dim / num_heads must be even, got {self.head_dim}.")
    if self.window == "centered" and self.halo_size == 0:
      raise ValueError("window='centered' with halo_size=0 is a 1×1 window; use halo_size >= 1.")
    self.query_stride = query_stride(self.block_size, self.strides, self.downsample)
    if self.fused_attention in fused_lib.PLATFORMS and not self.kernel_computes:
      raise ValueError(f"fused_attention={self.fused_attention!r} computes unmasked block windows "
                       f"(or centred ones at stride 1) with position terms and one value per "
                       f"key; this layer has "
                       f"window={self.window!r}, mask_out_of_image={self.mask_out_of_image}, "
                       f"rel_pos={self.rel_pos!r}: use fused_attention='none' (or None, whose "
                       f"default keeps XLA's path for such layers).")
    self.pool_after = self.query_stride != self.strides
    self._kernel_initializer = kernel_initializer
    self._kernel_regularizer = kernel_regularizer
    self._rel_pos_initializer = rel_pos_initializer

  @property
  def window_size(self) -> int:
    return self.block_size + 2 * self.halo_size

  def reachable_offsets(self, block_size: Optional[int] = None,
                        halo_size: Optional[int] = None) -> Tuple[int, int]:
    """(lowest, highest) offset this layer reads from its relative-position tables, or would read
    with block b / halo h in place of its own (same stride, downsampling and window); rows outside
    never get a gradient. See relative_position.reachable_offsets."""
    block = self.block_size if block_size is None else block_size
    halo = self.halo_size if halo_size is None else halo_size
    return relative_position.reachable_offsets(
        block, halo, query_stride(block, self.strides, self.downsample),
        centered=self.window == "centered", subsampled=self.query_positions == "subsampled")

  def build(self, input_shape):
    def projection(units, name):
      return tf_keras.layers.Dense(
          units, use_bias=False, name=name, dtype=self.dtype_policy,
          kernel_initializer=_fresh(tf_keras.initializers, self._kernel_initializer),
          kernel_regularizer=tf_keras.regularizers.get(self._kernel_regularizer))

    self.query = projection(self.key_dim, "query")
    self.key_value = projection(self.key_dim + self._value_projection_width(), "key_value")
    self.query.build(input_shape)
    self.key_value.build(input_shape)
    if self.rel_pos != "none":
      width = self.head_dim // 2 if self.rel_pos == "split" else self.head_dim
      init = self._rel_pos_initializer or {
          "class_name": "RandomNormal", "config": {"stddev": self.head_dim**-0.5}}
      rows = relative_position.table_rows(self.window_size)
      # Never auto-cast: under mixed precision the position logits stay in float32.
      self.rel_pos_h, self.rel_pos_w = (
          self.add_weight(name, shape=[rows, width], dtype=self.dtype,
                          initializer=_fresh(tf_keras.initializers, init),
                          experimental_autocast=False)
          for name in ("rel_pos_h", "rel_pos_w"))
    super().build(input_shape)

  def _window_mask(self) -> Optional[np.ndarray]:
    """[bq², w²] bool, True where the key is inside the query's centred (2h+1)² window."""
    if self.window != "centered":
      return None
    index = relative_position.window_index(self.block_size, self.halo_size, self.query_stride)
    offset = index - (self.window_size - 1)  # key row minus query row, [bq, w]
    inside = np.abs(offset) <= self.halo_size
    return (inside[:, None, :, None] & inside[None, :, None, :]).reshape(
        index.shape[0]**2, self.window_size**2)

  def attention_positions(self, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Where the probabilities of `call(..., return_attention_scores=True)` sit in the input.

    For an input of height×width, returns (queries [Z, bq², 2], keys [Z, w², 2]) int32 arrays of
    (row, column) input pixels, Z = ceil(H/b)·ceil(W/b) blocks row-major, bq = b / query stride,
    w = b + 2h. Keys outside the input (rows/columns < 0 or >= H/W) are the zero padding; queries
    outside it are padding whose outputs are cropped away.
    """
    b, h, s = self.block_size, self.halo_size, self.query_stride
    bq, w = b // s, self.window_size
    n_x, n_y = -(-height // b), -(-width // b)
    top = np.repeat(np.arange(n_x) * b, n_y)[:, None]  # [Z, 1] first row of each block
    left = np.tile(np.arange(n_y) * b, n_x)[:, None]
    q_row, q_col = np.divmod(np.arange(bq * bq), bq)
    k_row, k_col = np.divmod(np.arange(w * w), w)
    queries = np.stack([top + q_row * s, left + q_col * s], axis=-1)
    keys = np.stack([top - h + k_row, left - h + k_col], axis=-1)
    return queries.astype(np.int32), keys.astype(np.int32)

  # Every branch below is on Python values (shapes, settings): AutoGraph has nothing to convert,
  # and skipping its conversion makes every model build cheaper (docs/cpu_speed.md).
  @tf.autograph.experimental.do_not_convert
  def call(self, x: tf.Tensor, return_attention_scores: bool = False, training=None):
    """[B, H, W, C] -> [B, H', W', value_dim]; with `return_attention_scores` also the softmax
    probabilities, float32 [B, Z, N, bq², w²] (Z blocks, N heads; see `attention_positions`)."""
    if self.recompute and training and not return_attention_scores:
      return recompute_lib.recompute(self._attend)(x)
    return self._attend(x, return_attention_scores)

  def _attend(self, x: tf.Tensor, return_attention_scores: bool = False):
    """The layer's forward pass (see `call`)."""
    b, h, s = self.block_size, self.halo_size, self.query_stride
    bq, n, d = b // s, self.num_heads, self.head_dim
    batch, height, width, _ = blocking.dims(x)
    out_h, out_w = blocking.ceil_div(height, s), blocking.ceil_div(width, s)

    # Every s-th row / column. With an unknown batch (a free-batch export) as a 1x1 max pool: a
    # strided slice there gives OpenVINO a bounded batch dim, on which its CPU Einsum fails. With
    # a static batch (training, XLA) the slice, which XLA runs faster.
    if s == 1:
      queries = x
    elif x.shape[0] is None:
      queries = tf.nn.max_pool2d(x, 1, s, "VALID")
    else:
      queries = x[:, ::s, ::s, :]
    q = blocking.pad_to_multiple(self.query(queries), bq)  # [B, Hp/s, Wp/s, N·D]
    # The kernel is made for one shape: where the shape is not known (Keras's symbolic build, a
    # free-batch export), XLA computes the same map.
    kernel = None if return_attention_scores else self._kernel_call(q)
    if kernel:
      out, scores = self._fused(q, x, *kernel), None  # [B, Hp/s, Wp/s, N·Dv]
    else:
      q_blocks = blocking.to_blocks(q, bq)  # [B, X, Y, bq², N·D]
      _, n_x, n_y, _, _ = blocking.dims(q_blocks)
      kv_map = blocking.pad_to_multiple(self.key_value(x), b)  # [B, Hp, Wp, N·(D + Dv)]
      out, scores = self._unfused(q_blocks, kv_map, height, width, return_attention_scores)
      out = tf.reshape(out, [batch, n_x, n_y, bq * bq, self.value_dim])
      out = blocking.from_blocks(out, bq)
    out = out[:, :out_h, :out_w, :]
    if self.pool_after:
      out = tf.nn.avg_pool2d(out, self.strides, self.strides, "SAME")
    if return_attention_scores:  # the softmax the output used
      return out, scores
    return out

  def _unfused(self, q_blocks: tf.Tensor, kv_map: tf.Tensor, height, width, scores: bool):
    """The attention as XLA ops: q_blocks [B, X, Y, bq², N·D], kv_map [B, X·b, Y·b, N·(D + Dv)]
    -> (out [B, X·Y, bq², N, Dv], with `scores` the probabilities [B, X·Y, N, bq², w²] else
    None)."""
    b, h, n, d = self.block_size, self.halo_size, self.num_heads, self.head_dim
    batch, n_x, n_y, queries, _ = blocking.dims(q_blocks)
    kv = blocking.halo_windows(kv_map, b, h)  # [B, X, Y, w², N·(D + Dv)]
    k, v = kv[..., :self.key_dim], kv[..., self.key_dim:]
    # One axis for the X·Y blocks keeps every tensor at rank <= 5 (oneDNN's softmax limit on CPU).
    blocks = n_x * n_y
    # Logits and softmax in float32 under mixed precision (in the input dtype when that is wider).
    logit_dtype = tf.float32 if kv_map.dtype in (tf.float16, tf.bfloat16) else kv_map.dtype
    q = tf.reshape(tf.cast(q_blocks, logit_dtype), [batch, blocks, queries, n, d])
    k = tf.reshape(tf.cast(k, logit_dtype), [batch, blocks, -1, n, d])
    # The D^-1/2 scale goes on q (bq² values per block) rather than on the w² logits per query.
    scaled = q * (d**-0.5)
    rows, cols = self._position_terms(scaled if self.scale_rel_logits else q)
    mask = self._key_mask(height, width, blocks, logit_dtype)
    v = self._values(tf.reshape(v, [batch, blocks, (b + 2 * h)**2, -1]))  # [B, X·Y, w², N, Dv]
    # Under mixed_bfloat16 the logits go through memory in bfloat16 (block_attention docstring).
    storage = tf.bfloat16 if v.dtype == tf.bfloat16 else None
    out = block_attention.attend(scaled, k, v, rows, cols, mask, storage)
    if not scores:
      return out, None
    return out, block_attention.probabilities(scaled, k, rows, cols, mask, storage)

  def _position_terms(self, q: tf.Tensor):
    """(rows, cols), each [B, X·Y, N, bq², w] in q's dtype, of q [B, X·Y, bq², N, D]; or (None,
    None) without position terms."""
    if self.rel_pos == "none":
      return None, None
    batch, blocks, _, n, d = blocking.dims(q)
    bq = self.block_size // self.query_stride
    return relative_position.relative_terms(
        tf.reshape(q, [batch, blocks, bq, bq, n, d]), tf.cast(self.rel_pos_h, q.dtype),
        tf.cast(self.rel_pos_w, q.dtype), self.block_size, self.halo_size, self.query_stride,
        self.rel_pos, self.query_positions == "subsampled")

  @property
  def kernel_computes(self) -> bool:
    """Whether the fused kernel computes this layer's attention: block windows, or centred ones
    at stride 1 (SASA's), with position terms, keys outside the image not masked, one value per
    key."""
    return (not self.mask_out_of_image and self.rel_pos != "none"
            and (self.window == "block" or self.query_stride == 1)
            and self._value_projection_width() == self.value_dim)

  def fused_core(self, input_shape) -> fused_lib.Core:
    """The kernel's Core for an input of static shape [B, H, W, C]."""
    batch, height, width = tf.TensorShape(input_shape).as_list()[:3]
    bq, s = self.block_size // self.query_stride, self.query_stride
    rows, cols = (blocking.ceil_div(blocking.ceil_div(side, s), bq) * bq
                  for side in (height, width))
    return self._core(tf.TensorShape([batch, rows, cols, self.key_dim]))

  def _core(self, q_shape: tf.TensorShape) -> fused_lib.Core:
    d = self.head_dim
    return fused_lib.layer_core(
        q_shape, self.key_dim + self.value_dim, block=self.block_size, halo=self.halo_size,
        stride=self.query_stride, heads=self.num_heads, scale=d**-0.5,
        position_width=d // 2 if self.rel_pos == "split" else d,
        centered=self.window == "centered")

  def _kernel_call(self, q: tf.Tensor) -> Optional[Tuple[fused_lib.Core, str]]:
    """The Core and the platform whose kernel computes this call's attention, or None for XLA's:
    the layer's setting, or, unset, the run's default for this shape where the kernel computes
    it."""
    if not q.shape[:3].is_fully_defined():
      return None
    if self.fused_attention in fused_lib.PLATFORMS:  # forced: checked in __init__
      return self._core(q.shape), self.fused_attention
    if self.fused_attention == "none" or not self.kernel_computes:
      return None
    core = self._core(q.shape)
    if not fused_lib.fits(core, q.dtype):
      return None
    platform = fused_lib.platform_for(None, fused_lib.shape_key(core, q.dtype))
    return (core, platform) if platform else None

  def _fused(self, q: tf.Tensor, x: tf.Tensor, core: fused_lib.Core, platform: str):
    """The attention by fused_attention.attend_maps with `core` on `platform`: the query map q
    [B, X·bq, Y·bq, N·D] in the compute dtype and the layer's input x [B, H, W, C] -> [B, X·bq,
    Y·bq, N·Dv]."""
    tables = relative_position.window_tables(
        tf.cast(self.rel_pos_h, tf.float32), tf.cast(self.rel_pos_w, tf.float32),
        self.block_size, self.halo_size, self.query_stride, self.rel_pos,
        self.query_positions == "subsampled")
    if self.scale_rel_logits:
      tables = tables * self.head_dim**-0.5
    return fused_lib.attend_maps(q, self.key_value(x), tables, core, platform)

  def _key_mask(self, height, width, blocks, dtype) -> Optional[tf.Tensor]:
    """Bool [1 or B, X·Y, 1, bq², w²] (broadcastable), False for keys a query may not attend to:
    outside its centred window (window='centered') or outside the image (mask_out_of_image)."""
    mask = self._window_mask()
    mask = None if mask is None else tf.constant(mask)
    if self.mask_out_of_image:
      b, h = self.block_size, self.halo_size
      inside = tf.ones([1, height, width, 1], dtype)
      inside = blocking.halo_windows(blocking.pad_to_multiple(inside, b), b, h)  # [1, X, Y, w², 1]
      inside = tf.reshape(inside, [1, blocks, 1, 1, -1]) > 0.5
      mask = inside if mask is None else tf.logical_and(mask, inside)
    return mask

  def _value_projection_width(self) -> int:
    """Channels of the value projection (a subclass may project several values per pixel)."""
    return self.value_dim

  def _values(self, v: tf.Tensor) -> tf.Tensor:
    """The values each key offers, per head: [B, Z, K, value projection] -> [B, Z, K, N, Dv]."""
    batch, blocks, keys, _ = blocking.dims(v)
    return tf.reshape(v, [batch, blocks, keys, self.num_heads, self.value_dim // self.num_heads])

  def compute_output_shape(self, input_shape):
    shape = tf.TensorShape(input_shape).as_list()
    spatial = [None if d is None else -(-d // self.strides) for d in shape[1:3]]
    return tf.TensorShape([shape[0]] + spatial + [self.value_dim])

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update(
        num_heads=self.num_heads,
        key_dim=self.key_dim,
        value_dim=self.value_dim,
        block_size=self.block_size,
        halo_size=self.halo_size,
        strides=self.strides,
        downsample=self.downsample,
        window=self.window,
        mask_out_of_image=self.mask_out_of_image,
        rel_pos=self.rel_pos,
        scale_rel_logits=self.scale_rel_logits,
        query_positions=self.query_positions,
        recompute=self.recompute,
        fused_attention=self.fused_attention,
        kernel_initializer=tf_keras.initializers.serialize(
            tf_keras.initializers.get(self._kernel_initializer)),
        kernel_regularizer=tf_keras.regularizers.serialize(
            tf_keras.regularizers.get(self._kernel_regularizer))
        if self._kernel_regularizer is not None else None,
        rel_pos_initializer=tf_keras.initializers.serialize(
            tf_keras.initializers.get(self._rel_pos_initializer))
        if self._rel_pos_initializer is not None else None,
    )
    return config

  @classmethod
  def from_config(cls, config: Dict[str, Any]):
    """The layer of `get_config`'s dict; a config saved before the switch's rename names it
    fused_core."""
    config = dict(config)
    if "fused_core" in config:
      config.setdefault("fused_attention", config.pop("fused_core"))
    return cls(**config)
