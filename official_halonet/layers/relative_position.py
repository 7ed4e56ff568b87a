"""Factorized relative-position logits for blocked local attention.

A query at row i attending to a key at row a gets the term q · r_h[a - i] (likewise for columns), with
one table per axis shared by all heads. In a window of w = b + 2h pixels the offset a - i lies in
[-(w - 1), w - 1], so each table has 2w - 1 rows and row `offset + w - 1` holds offset `offset`
(the h outermost rows at each end are never read, see `reachable_offsets`; they are kept so a
table's shape depends on w alone).

Two ways to share a head's channels between the axes:
  'factorized' (HaloNet): r_h, r_w are both D wide;  term = q · r_h[a-i] + q · r_w[c-j]
  'split'      (SASA):    r_h, r_w are D/2 wide;     term = q[:D/2] · r_h[a-i] + q[D/2:] · r_w[c-j]
                          (i.e. q · concat(r_h, r_w), the concatenated embedding of the SASA paper)
"""
from typing import Tuple

import numpy as np
import tensorflow as tf

REL_POS_MODES = ("factorized", "split", "none")


def table_rows(window: int) -> int:
  """Rows of one axis table for a window of `window` pixels: 2w - 1."""
  return 2 * window - 1


def reachable_offsets(block: int, halo: int, stride: int = 1,
                      centered: bool = False) -> Tuple[int, int]:
  """(lowest, highest) offset a - i that a layer's queries read from its table; rows outside stay
  at their initial values, since no gradient ever reaches them.

  Read off `window_index`: queries at block rows 0, s, ..., b - s against window keys at block rows
  -h .. b + h - 1 give offsets -(b - s + h) .. b + h - 1 (stride 1: |o| <= b + h - 1; a strided
  layer reaches s - 1 fewer negative offsets). A centred (SASA-masked) window keeps |o| <= h of them.
  `stride` is the layer's query stride (1 when it downsamples by pooling after attention).
  """
  offsets = window_index(block, halo, stride) - (block + 2 * halo - 1)
  if centered:
    offsets = offsets[np.abs(offsets) <= halo]
  return int(offsets.min()), int(offsets.max())


def window_index(block: int, halo: int, stride: int) -> np.ndarray:
  """[b/s, w] int32: table row for query i' (input row s·i') and window key position a.

  The key at window position a sits at block row a - h, the query at block row s·i', so the offset
  is a - h - s·i' and the table row is that plus w - 1.
  """
  window = block + 2 * halo
  queries = np.arange(0, block, stride)[:, None]
  keys = np.arange(window)[None, :]
  return (keys - halo - queries + window - 1).astype(np.int32)


def relative_logits(q: tf.Tensor, table_h: tf.Tensor, table_w: tf.Tensor, block: int, halo: int,
                    stride: int, mode: str) -> tf.Tensor:
  """Relative-position logits of every query in a block against every key of its window.

  Args:
    q: [B, n_h·n_w, bq, bq, N, D] queries (bq = b / stride query rows and columns per block).
    table_h, table_w: [2w - 1, D] ('factorized') or [2w - 1, D/2] ('split').
    block, halo, stride: b, h, s.
    mode: 'factorized' or 'split'.

  Returns:
    [B, n_h·n_w, N, bq·bq, w·w] logits, in the dtype of the tables.
  """
  index = window_index(block, halo, stride)
  rel_h = tf.gather(table_h, index)  # [bq, w, D']
  rel_w = tf.gather(table_w, index)
  if mode == "split":
    half = q.shape[-1] // 2
    q_h, q_w = q[..., :half], q[..., half:]
  else:
    q_h = q_w = q
  logits_h = tf.einsum("bzijnd,ikd->bznijk", q_h, rel_h)  # query (i, j), key row k
  logits_w = tf.einsum("bzijnd,jld->bznijl", q_w, rel_w)  # query (i, j), key column l
  logits = logits_h[..., :, None] + logits_w[..., None, :]  # [..., bq, bq, w, w]
  shape = tf.shape(logits)
  window = block + 2 * halo
  bq = index.shape[0]
  return tf.reshape(logits, tf.concat([shape[:3], [bq * bq, window * window]], axis=0))
