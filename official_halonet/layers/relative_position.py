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

Strided layers (queries at block rows 0, s, 2s, ...): by default the query's row is its input row
s·i', so the offset is the true distance in input pixels. `subsampled=True` uses i' instead (timm's
HaloAttn indexes its tables that way), so query i' reads row a - h - i' + w - 1. The two differ for
every i' > 0 and no permutation of a table turns one into the other; timm-trained tables need
`subsampled=True`. With stride 1 both are the same.
"""
from typing import Tuple

import numpy as np
import tensorflow as tf

REL_POS_MODES = ("factorized", "split", "none")
TABLE_NAMES = ("rel_pos_h", "rel_pos_w")  # the layers' attribute (and checkpoint) names


def table_rows(window: int) -> int:
  """Rows of one axis table for a window of `window` pixels: 2w - 1."""
  return 2 * window - 1


def reachable_offsets(block: int, halo: int, stride: int = 1, centered: bool = False,
                      subsampled: bool = False) -> Tuple[int, int]:
  """(lowest, highest) offset a - i that a layer's queries read from its table; rows outside stay
  at their initial values, since no gradient ever reaches them.

  Read off `window_index`: queries at block rows 0, s, ..., b - s against window keys at block rows
  -h .. b + h - 1 give offsets -(b - s + h) .. b + h - 1 (stride 1: |o| <= b + h - 1; a strided
  layer reaches s - 1 fewer negative offsets). A centred (SASA-masked) window keeps |o| <= h of them.
  `stride` is the layer's query stride (1 when it downsamples by pooling after attention);
  `subsampled` as in `window_index` (then -(b/s - 1 + h) .. b + h - 1).
  """
  offsets = window_index(block, halo, stride, subsampled) - (block + 2 * halo - 1)
  if centered:
    offsets = offsets[np.abs(offsets) <= halo]
  return int(offsets.min()), int(offsets.max())


def window_index(block: int, halo: int, stride: int, subsampled: bool = False) -> np.ndarray:
  """[b/s, w] int32: table row for query i' (input row s·i') and window key position a.

  The key at window position a sits at block row a - h, the query at block row s·i', so the offset
  is a - h - s·i' and the table row is that plus w - 1; with `subsampled` the query counts as row
  i' (a - h - i' + w - 1), timm's convention.
  """
  window = block + 2 * halo
  queries = np.arange(0, block, stride)[:, None]
  if subsampled:
    queries = queries // stride
  keys = np.arange(window)[None, :]
  return (keys - halo - queries + window - 1).astype(np.int32)


def _rows_at(table: tf.Tensor, index: np.ndarray) -> tf.Tensor:
  """table[index] as a product with a constant one-hot [*index.shape, rows] (exact).

  A gather would make the table's gradient sparse (IndexedSlices), which an optimizer applies
  with sparse update ops that XLA cannot compile (jit_compile on CPU / GPU, or a TPU step before
  the cross-replica sum densifies it); this gradient is dense.
  """
  one_hot = np.eye(table.shape[0], dtype=table.dtype.as_numpy_dtype)[index]
  return tf.einsum("ikr,rd->ikd", one_hot, table)


def relative_terms(q: tf.Tensor, table_h: tf.Tensor, table_w: tf.Tensor, block: int, halo: int,
                   stride: int, mode: str, subsampled: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
  """The two factors of every query's relative-position logits against its window's keys.

  The logit of query (i, j) for the key at window row a, column c is rows[.., a] + cols[.., c];
  the [w, w] grid is never formed here (block_attention adds it to the content logits).

  Args:
    q: [B, n_h·n_w, bq, bq, N, D] queries (bq = b / stride query rows and columns per block).
    table_h, table_w: [2w - 1, D] ('factorized') or [2w - 1, D/2] ('split').
    block, halo, stride: b, h, s.
    mode: 'factorized' or 'split'.
    subsampled: index the tables by subsampled query position (see `window_index`).

  Returns:
    (rows, cols), each [B, n_h·n_w, N, bq·bq, w], in the dtype of the tables.
  """
  index = window_index(block, halo, stride, subsampled)
  rel_h, rel_w = _rows_at(table_h, index), _rows_at(table_w, index)  # [bq, w, D']
  bq, window = index.shape
  batch_blocks, heads = tf.shape(q)[:2], q.shape[4]
  # B and Z share one axis here, so no tensor exceeds rank 5 (LiteRT's StridedSlice limit).
  q = tf.reshape(q, [-1] + q.shape[2:].as_list())  # [B·Z, bq, bq, N, D]
  if mode == "split":
    half = q.shape[-1] // 2
    q_h, q_w = q[..., :half], q[..., half:]
  else:
    q_h = q_w = q
  rows = tf.einsum("zijnd,ikd->znijk", q_h, rel_h)  # query (i, j), key row k
  cols = tf.einsum("zijnd,jld->znijl", q_w, rel_w)  # query (i, j), key column l
  flat = tf.concat([batch_blocks, [heads, bq * bq, window]], axis=0)
  return tf.reshape(rows, flat), tf.reshape(cols, flat)


def window_tables(table_h: tf.Tensor, table_w: tf.Tensor, block: int, halo: int, stride: int,
                  mode: str, subsampled: bool = False) -> tf.Tensor:
  """The table rows every query row and column of a block reads, stacked for the fused kernel.

  Args: as `relative_terms` (tables [2w - 1, D] or [2w - 1, D/2]).

  Returns:
    [2·bq·w, D] in the tables' dtype: row i·w + u holds r_h[window_index[i, u]] (query row i, key
    window row u), row bq·w + j·w + c holds r_w[window_index[j, c]]. 'split' rows are zero-padded
    to D (r_h on q's first half, r_w on its second), so q · row is each term of `relative_terms`.
  """
  index = window_index(block, halo, stride, subsampled)
  rel_h, rel_w = _rows_at(table_h, index), _rows_at(table_w, index)  # [bq, w, D']
  if mode == "split":
    zeros = tf.zeros_like(rel_h)
    rel_h, rel_w = tf.concat([rel_h, zeros], axis=-1), tf.concat([zeros, rel_w], axis=-1)
  return tf.reshape(tf.concat([rel_h, rel_w], axis=0), [-1, rel_h.shape[-1]])
