"""Softmax attention of each block's queries over its window's keys.

For every block z and head n (Q queries, K = w·w keys of the window):

    L = q·kᵀ + rows[u] + cols[c]   (key at window row u, column c; rows / cols optional)
    L = -1e9 where the mask is False
    P = exp(L - max L),  out = (P·v) / Σ_keys P

q arrives already scaled (s_qk = D^-1/2 folded in), so this is the layer's eq. 2-3. The
normalisation is deferred to the [.., Q, N, Dv] output, which saves a pass over the K-wide weights,
and the max is a constant shift that needs no gradient.

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


def logits(q: tf.Tensor, k: tf.Tensor, rows: Optional[tf.Tensor] = None,
           cols: Optional[tf.Tensor] = None, mask: Optional[tf.Tensor] = None) -> tf.Tensor:
  """L: [B, Z, N, Q, K] (see the module docstring)."""
  result = tf.einsum("bzqnd,bzknd->bznqk", q, k)
  if rows is not None:
    shape = tf.shape(rows)
    window = rows.shape[-1] or shape[-1]
    # expand_dims rather than [..., None] (a 6-D StridedSlice, which LiteRT's builtins lack).
    position = tf.expand_dims(rows, -1) + tf.expand_dims(cols, -2)  # [B, Z, N, Q, w, w]
    result += tf.reshape(position, tf.concat([shape[:-1], [window * window]], axis=0))
  if mask is not None:
    result = tf.where(mask, result, MASKED_LOGIT)
  return result


def probabilities(q, k, rows=None, cols=None, mask=None) -> tf.Tensor:
  """softmax(L) over the keys: [B, Z, N, Q, K], float32 (for display; plain autodiff)."""
  return tf.nn.softmax(logits(q, k, rows, cols, mask), axis=-1)


def attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, rows: Optional[tf.Tensor] = None,
           cols: Optional[tf.Tensor] = None, mask: Optional[tf.Tensor] = None) -> tf.Tensor:
  """out = softmax(L)·v per block and head: [B, Z, Q, N, Dv] (see the module docstring)."""
  values = logits(q, k, rows, cols, mask)
  weights = tf.exp(values - tf.stop_gradient(tf.reduce_max(values, axis=-1, keepdims=True)))
  sums = tf.transpose(tf.reduce_sum(weights, axis=-1), [0, 1, 3, 2])[..., None]  # [B, Z, Q, N, 1]
  out = tf.einsum("bznqk,bzknd->bzqnd", tf.cast(weights, v.dtype), v)
  return out / tf.cast(sums, v.dtype)


