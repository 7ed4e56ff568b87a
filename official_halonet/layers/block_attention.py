"""Softmax attention of each block's queries over its window's keys.

For every block z and head n (Q queries, K = w·w keys of the window):

    L = q·kᵀ + rows[u] + cols[c]   (key at window row u, column c; rows / cols optional)
    L = -1e9 where the mask is False
    P = exp(L - max L),  out = (P·v) / Σ_keys P

q arrives already scaled (s_qk = D^-1/2 folded in), so this is the layer's eq. 2-3. The
normalisation is deferred to the [.., Q, N, Dv] output, which saves a pass over the K-wide weights,
and the max is a constant shift that needs no gradient.

Storage dtype (`storage`, bfloat16 under mixed_bfloat16, else None): q·k, the position sum, the max,
exp and the softmax sum are float32, but the [.., Q, K] tensors that go through memory, the
position grid and the logits, are rounded to `storage` (the max is taken before that rounding).
Each logit is then off by at most u·(2|position| + |q·k|), u = 2^-8 for bfloat16, which perturbs
each probability by a factor within exp(±2·that) (tests/test_attention_layers.py bounds the output
against float32 with it).

Shapes:
  q     [B, Z, Q, N, D]   float32 (the logits' dtype)
  k     [B, Z, K, N, D]   same dtype as q
  v     [B, Z, K, N, Dv]  the layer's compute dtype (bfloat16 under mixed precision)
  rows, cols  [B, Z, N, Q, w]  relative-position terms per key row / column (K = w²), or None
  mask  bool, broadcastable to [B, Z, N, Q, K], or None
  ->    [B, Z, Q, N, Dv] in v's dtype
"""
from typing import Optional

import tensorflow as tf

MASKED_LOGIT = -1e9


def _stored(x: tf.Tensor, storage: Optional[tf.DType]) -> tf.Tensor:
  """x rounded to the storage dtype and back (identity without one)."""
  return x if storage is None else tf.cast(tf.cast(x, storage), x.dtype)


def logits(q: tf.Tensor, k: tf.Tensor, rows: Optional[tf.Tensor] = None,
           cols: Optional[tf.Tensor] = None, mask: Optional[tf.Tensor] = None,
           storage: Optional[tf.DType] = None) -> tf.Tensor:
  """L: [B, Z, N, Q, K] before its own rounding to `storage` (see the module docstring)."""
  result = tf.einsum("bzqnd,bzknd->bznqk", q, k)
  if rows is not None:
    shape = tf.shape(rows)
    window = rows.shape[-1] or shape[-1]
    # expand_dims rather than [..., None] (a 6-D StridedSlice, which LiteRT's builtins lack).
    position = _stored(tf.expand_dims(rows, -1) + tf.expand_dims(cols, -2), storage)  # [B,Z,N,Q,w,w]
    result += tf.reshape(position, tf.concat([shape[:-1], [window * window]], axis=0))
  if mask is not None:
    result = tf.where(mask, result, MASKED_LOGIT)
  return result


def probabilities(q, k, rows=None, cols=None, mask=None, storage=None) -> tf.Tensor:
  """softmax(L) over the keys: [B, Z, N, Q, K], float32 (for display; plain autodiff)."""
  return tf.nn.softmax(_stored(logits(q, k, rows, cols, mask, storage), storage), axis=-1)


def attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, rows: Optional[tf.Tensor] = None,
           cols: Optional[tf.Tensor] = None, mask: Optional[tf.Tensor] = None,
           storage: Optional[tf.DType] = None) -> tf.Tensor:
  """out = softmax(L)·v per block and head: [B, Z, Q, N, Dv] (see the module docstring)."""
  values = logits(q, k, rows, cols, mask, storage)
  shift = tf.stop_gradient(tf.reduce_max(values, axis=-1, keepdims=True))
  weights = tf.exp(_stored(values, storage) - shift)
  sums = tf.transpose(tf.reduce_sum(weights, axis=-1), [0, 1, 3, 2])[..., None]  # [B, Z, Q, N, 1]
  out = tf.einsum("bznqk,bzknd->bzqnd", tf.cast(weights, v.dtype), v)
  return out / tf.cast(sums, v.dtype)


