"""Plain, obviously-correct references for the attention layers, written without the layer's code.

* `halo_loops` / `sasa_loops` / `attention_stem_loops`: NumPy, one output pixel and one head at a
  time, the neighbourhood listed pixel by pixel from the definition (float64).
* `halo_dense`: TensorFlow, every query against every pixel of a zero-extended map with a boolean
  neighbourhood mask and relative offsets gathered by absolute position; differentiable, so it gives
  the reference gradients. It shares no blocking, windowing or reshaping logic with the layer.

Both take the layer's weights as plain arrays: wq [C, N·D], wk [C, N·D], wv [C, N·Dv], and the
relative tables rel_h, rel_w [2w - 1, D or D/2] where row `offset + w - 1` holds `offset`.
"""
import math
from typing import Optional

import numpy as np
import tensorflow as tf


def layer_weights(layer):
  """Splits a built HaloAttention / SASAAttention into the arrays the references take."""
  wq = layer.query.kernel.numpy()
  wkv = layer.key_value.kernel.numpy()
  wk, wv = wkv[:, :layer.key_dim], wkv[:, layer.key_dim:]
  rel_h = layer.rel_pos_h.numpy() if layer.rel_pos != "none" else None
  rel_w = layer.rel_pos_w.numpy() if layer.rel_pos != "none" else None
  return wq, wk, wv, rel_h, rel_w


def avg_pool_same(y: np.ndarray, s: int) -> np.ndarray:
  """s×s average pooling, stride s, TF 'SAME' padding (padding excluded from the mean)."""
  batch, height, width, channels = y.shape
  out_h, out_w = -(-height // s), -(-width // s)
  top = max((out_h - 1) * s + s - height, 0) // 2
  left = max((out_w - 1) * s + s - width, 0) // 2
  out = np.zeros((batch, out_h, out_w, channels), y.dtype)
  for i in range(out_h):
    for j in range(out_w):
      r0, c0 = max(i * s - top, 0), max(j * s - left, 0)
      r1, c1 = min(i * s - top + s, height), min(j * s - left + s, width)
      out[:, i, j] = y[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out


def _position_term(q, a, c, i, j, rel_h, rel_w, window, rel_mode):
  if rel_mode == "none":
    return 0.0
  rh, rw = rel_h[a - i + window - 1], rel_w[c - j + window - 1]
  if rel_mode == "split":
    half = q.shape[0] // 2
    return q[:half] @ rh + q[half:] @ rw
  return q @ rh + q @ rw


def _probabilities(q, keys, positions, i, j, rel_h, rel_w, window, rel_mode, scale_rel):
  """Softmax over the listed keys of one query and head, [len(keys)]."""
  d = q.shape[0]
  logits = []
  for (a, c), k in zip(positions, keys):
    pos = _position_term(q, a, c, i, j, rel_h, rel_w, window, rel_mode)
    logits.append(q @ k / math.sqrt(d) + (pos / math.sqrt(d) if scale_rel else pos))
  logits = np.array(logits)
  p = np.exp(logits - logits.max())
  return p / p.sum()


def _attend(q, keys, values, positions, i, j, rel_h, rel_w, window, rel_mode, scale_rel,
            record=None):
  p = _probabilities(q, keys, positions, i, j, rel_h, rel_w, window, rel_mode, scale_rel)
  if record is not None:
    record.update(zip(positions, p))
  return p @ np.array(values)


def halo_loops(x, wq, wk, wv, rel_h, rel_w, *, heads, block, halo, stride=1, pool_after=False,
               centered=False, mask_out_of_image=False, rel_mode="factorized", scale_rel=False,
               probabilities=None):
  """y[b, i', j'] for the query at (s·i', s·j') attending to its block's (b+2h)² window.

  With a dict `probabilities`, also fills probabilities[(batch, i, j, head)] = {(a, c): p} for
  every key pixel (a, c) (outside the image for zero padding) that takes part in the softmax.
  """
  x = np.asarray(x, np.float64)
  batch, height, width, _ = x.shape
  q_all, k_all, v_all = x @ wq, x @ wk, x @ wv
  d, dv = wq.shape[1] // heads, wv.shape[1] // heads
  window = block + 2 * halo
  qs = 1 if pool_after else stride
  out = np.zeros((batch, -(-height // qs), -(-width // qs), heads * dv))
  for bi in range(batch):
    for oi in range(out.shape[1]):
      for oj in range(out.shape[2]):
        i, j = oi * qs, oj * qs
        top, left = (i // block) * block - halo, (j // block) * block - halo
        for n in range(heads):
          q = q_all[bi, i, j, n * d:(n + 1) * d]
          positions, keys, values = [], [], []
          for a in range(top, top + window):
            for c in range(left, left + window):
              if centered and (abs(a - i) > halo or abs(c - j) > halo):
                continue
              inside = 0 <= a < height and 0 <= c < width
              if mask_out_of_image and not inside:
                continue
              positions.append((a, c))
              keys.append(k_all[bi, a, c, n * d:(n + 1) * d] if inside else np.zeros(d))
              values.append(v_all[bi, a, c, n * dv:(n + 1) * dv] if inside else np.zeros(dv))
          record = None if probabilities is None else probabilities.setdefault((bi, i, j, n), {})
          out[bi, oi, oj, n * dv:(n + 1) * dv] = _attend(q, keys, values, positions, i, j, rel_h,
                                                          rel_w, window, rel_mode, scale_rel,
                                                          record)
  return avg_pool_same(out, stride) if pool_after and stride > 1 else out


def sasa_loops(x, wq, wk, wv, rel_h, rel_w, *, heads, kernel_size, stride=1,
               mask_out_of_image=False):
  """SASA from its own definition: each pixel attends to the k×k window centred on it.

  No blocks at all; rel tables are indexed as the layer stores them (row offset + w - 1), with the
  layer's window w = b + 2h, passed in through the table length.
  """
  x = np.asarray(x, np.float64)
  batch, height, width, _ = x.shape
  q_all, k_all, v_all = x @ wq, x @ wk, x @ wv
  d, dv = wq.shape[1] // heads, wv.shape[1] // heads
  radius = kernel_size // 2
  window = (rel_h.shape[0] + 1) // 2
  out = np.zeros((batch, height, width, heads * dv))
  for bi in range(batch):
    for i in range(height):
      for j in range(width):
        for n in range(heads):
          q = q_all[bi, i, j, n * d:(n + 1) * d]
          positions, keys, values = [], [], []
          for a in range(i - radius, i + radius + 1):
            for c in range(j - radius, j + radius + 1):
              inside = 0 <= a < height and 0 <= c < width
              if mask_out_of_image and not inside:
                continue
              positions.append((a, c))
              keys.append(k_all[bi, a, c, n * d:(n + 1) * d] if inside else np.zeros(d))
              values.append(v_all[bi, a, c, n * dv:(n + 1) * dv] if inside else np.zeros(dv))
          out[bi, i, j, n * dv:(n + 1) * dv] = _attend(q, keys, values, positions, i, j, rel_h,
                                                        rel_w, window, "split", False)
  return avg_pool_same(out, stride) if stride > 1 else out


def attention_stem_loops(x, wq, wk, wv_list, e_row, e_col, nu, *, heads, pool):
  """SASA's attention stem (appendix A.1) from its definition, one pixel and one head at a time.

  Pixel (i, j) attends to the in-image pixels of its p×p pooling window (rows p·floor(i/p) ...),
  with content-only logits q·k / sqrt(D). The value of key (a, c) is
  sum_m softmax_m((e_row[a mod p] + e_col[c mod p]) · nu)[m] · x_ac W_V^m.
  wv_list holds the M value kernels [C, N·Dv]; e_row, e_col [p, E]; nu [E, M].
  """
  x = np.asarray(x, np.float64)
  batch, height, width, _ = x.shape
  q_all, k_all = x @ wq, x @ wk
  d, dv = wq.shape[1] // heads, wv_list[0].shape[1] // heads
  out = np.zeros((batch, height, width, heads * dv))
  for bi in range(batch):
    for i in range(height):
      for j in range(width):
        top, left = (i // pool) * pool, (j // pool) * pool
        for n in range(heads):
          q = q_all[bi, i, j, n * d:(n + 1) * d]
          logits, values = [], []
          for a in range(top, min(top + pool, height)):
            for c in range(left, min(left + pool, width)):
              logits.append(q @ k_all[bi, a, c, n * d:(n + 1) * d] / math.sqrt(d))
              mix = (e_row[a - top] + e_col[c - left]) @ nu
              mix = np.exp(mix - mix.max())
              mix /= mix.sum()
              value = sum(p * (x[bi, a, c] @ w) for p, w in zip(mix, wv_list))
              values.append(value[n * dv:(n + 1) * dv])
          logits = np.array(logits)
          weights = np.exp(logits - logits.max())
          weights /= weights.sum()
          out[bi, i, j, n * dv:(n + 1) * dv] = weights @ np.array(values)
  return out


def halo_dense(x, wq, wk, wv, rel_h: Optional[tf.Tensor], rel_w: Optional[tf.Tensor], *, heads,
               block, halo, stride=1, pool_after=False, centered=False, mask_out_of_image=False,
               rel_mode="factorized", scale_rel=False):
  """Dense masked formulation in TF (differentiable): every query against every extended pixel."""
  batch, height, width, _ = x.shape
  d, dv = wq.shape[1] // heads, wv.shape[1] // heads
  window = block + 2 * halo
  qs = 1 if pool_after else stride
  ext = block + halo  # enough zero border for any window
  xe = tf.pad(x, [[0, 0], [ext, ext], [ext, ext], [0, 0]])
  he, we = height + 2 * ext, width + 2 * ext
  # Absolute coordinates of every extended pixel and of every query.
  ka, kc = np.meshgrid(np.arange(he) - ext, np.arange(we) - ext, indexing="ij")
  ka, kc = ka.reshape(-1), kc.reshape(-1)
  out_h, out_w = -(-height // qs), -(-width // qs)
  qi, qj = np.meshgrid(np.arange(out_h) * qs, np.arange(out_w) * qs, indexing="ij")
  qi, qj = qi.reshape(-1), qj.reshape(-1)
  top, left = (qi // block) * block - halo, (qj // block) * block - halo
  mask = ((ka[None] >= top[:, None]) & (ka[None] < top[:, None] + window) &
          (kc[None] >= left[:, None]) & (kc[None] < left[:, None] + window))
  if centered:
    mask &= (np.abs(ka[None] - qi[:, None]) <= halo) & (np.abs(kc[None] - qj[:, None]) <= halo)
  if mask_out_of_image:
    mask &= ((ka >= 0) & (ka < height) & (kc >= 0) & (kc < width))[None]

  flat = tf.reshape(xe, [batch, he * we, -1])
  q_pix = tf.gather(flat, (qi + ext) * we + (qj + ext), axis=1)  # [B, Q, C]
  q = tf.reshape(q_pix @ wq, [batch, -1, heads, d])
  k = tf.reshape(flat @ wk, [batch, -1, heads, d])
  v = tf.reshape(flat @ wv, [batch, -1, heads, dv])
  logits = tf.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(d)
  if rel_mode != "none":
    rows = 2 * window - 1
    idx_h = np.clip(ka[None] - qi[:, None] + window - 1, 0, rows - 1)  # [Q, K]
    idx_w = np.clip(kc[None] - qj[:, None] + window - 1, 0, rows - 1)
    if rel_mode == "split":
      q_h, q_w = q[..., :d // 2], q[..., d // 2:]
    else:
      q_h = q_w = q
    by_row_h = tf.einsum("bqnd,rd->bnqr", q_h, rel_h)  # [B, N, Q, rows]
    by_row_w = tf.einsum("bqnd,rd->bnqr", q_w, rel_w)
    one_hot_h = tf.one_hot(idx_h, rows, dtype=x.dtype)  # [Q, K, rows]
    one_hot_w = tf.one_hot(idx_w, rows, dtype=x.dtype)
    pos = (tf.einsum("bnqr,qkr->bnqk", by_row_h, one_hot_h) +
           tf.einsum("bnqr,qkr->bnqk", by_row_w, one_hot_w))
    logits += pos / math.sqrt(d) if scale_rel else pos
  logits = tf.where(tf.constant(mask)[None, None], logits, tf.constant(-1e30, x.dtype))
  weights = tf.nn.softmax(logits, axis=-1)
  y = tf.einsum("bnqk,bknd->bqnd", weights, v)
  y = tf.reshape(y, [batch, out_h, out_w, heads * dv])
  if pool_after and stride > 1:
    y = tf.nn.avg_pool2d(y, stride, stride, "SAME")
  return y
