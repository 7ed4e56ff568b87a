"""Resizing a trained relative-position table for another window (fine-tuning at another b / h).

A table of relative_position.py ([2w - 1, D], row o + w - 1 for offset o) holds trained values
only for the offsets its layer could read (relative_position.reachable_offsets);
`resize_relative_table` builds a table for another window from those rows alone.
official_halonet/checkpoints/restore.py says when it is used.
"""
from typing import Tuple

import numpy as np

Reach = Tuple[int, int]  # (lowest, highest) offset a layer reads from its table


def _window_of(rows: int, what: str) -> int:
  if rows < 1 or rows % 2 != 1:
    raise ValueError(f"{what}: a relative-position table has 2w-1 (odd) rows, got {rows}")
  return (rows + 1) // 2


def _check_reach(reach: Reach, window: int, what: str):
  low, high = reach
  if not -(window - 1) <= low <= 0 <= high <= window - 1:
    raise ValueError(f"{what}: reachable offsets {list(reach)} must hold 0 and lie within "
                     f"[-{window - 1}, {window - 1}] of a {2 * window - 1}-row table")


def _source_offset(offset: int, new_reach: Reach, old_reach: Reach, interpolate: bool):
  """Old offset (floor, fraction in [0, 1)) that new offset `offset` takes its row from."""
  offset = min(max(offset, new_reach[0]), new_reach[1])  # unreadable rows: the nearest readable
  if not interpolate:
    return min(max(offset, old_reach[0]), old_reach[1]), 0.0
  side = 1 if offset >= 0 else 0  # each side of offset 0 maps linearly onto the old one's
  if new_reach[side] == 0:  # this side holds offset 0 alone
    return 0, 0.0
  numerator, denominator = offset * old_reach[side], new_reach[side]
  if denominator < 0:
    numerator, denominator = -numerator, -denominator
  floor = numerator // denominator  # exact integer arithmetic: matching offsets land exactly
  return floor, (numerator - floor * denominator) / denominator


def resize_relative_table(table, old_reach: Reach, new_rows: int, new_reach: Reach,
                          interpolate: bool = True) -> np.ndarray:
  """Resizes a [2w-1, D] table to [new_rows, D] using only the rows the old layer could read.

  Args:
    table: [2w-1, D], row o + w - 1 for offset o.
    old_reach: (lowest, highest) offset the layer that trained `table` read (HaloAttention.
      reachable_offsets with the pretraining's b and h); rows outside hold initial values.
    new_rows: 2w'-1 rows of the new table.
    new_reach: (lowest, highest) offset the new layer reads.
    interpolate: True (unmasked halo attention): the new readable range maps linearly onto the
      old one, each side of offset 0 on its own (the two sides differ for strided layers), and
      the old table is linearly interpolated there: offset 0 and the outermost readable offsets
      keep their rows, and so does every old offset o at k·o when the new reach is k times the
      old. False (masked windows): every offset keeps its own row.
      Either way an offset beyond what the old layer read takes its nearest readable row, and a
      row the new layer cannot read copies the row of its nearest readable offset.

  Returns:
    [new_rows, D] in the table's dtype (float64 arithmetic).
  """
  table = np.asarray(table)
  if table.ndim != 2:
    raise ValueError(f"expected a [rows, width] table, got shape {list(table.shape)}")
  old_w = _window_of(table.shape[0], "table")
  new_w = _window_of(new_rows, "new_rows")
  _check_reach(old_reach, old_w, "old_reach")
  _check_reach(new_reach, new_w, "new_reach")
  values = table.astype(np.float64)
  rows = []
  for offset in range(-(new_w - 1), new_w):
    floor, fraction = _source_offset(offset, tuple(new_reach), tuple(old_reach), interpolate)
    row = values[floor + old_w - 1]
    if fraction:  # floor < the old reach's high end here, so floor + 1 was read as well
      row = (1.0 - fraction) * row + fraction * values[floor + old_w]
    rows.append(row)
  return np.stack(rows).astype(table.dtype)
