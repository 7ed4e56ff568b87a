"""Attention maps as a picture (matplotlib, no display needed).

Layout of `figure(...)`, one cell = CELL_INCHES square:

  for each layer, for each query drawn:  [image: query marked, window outlined] [head 1] ... [head N]
  last row, across all columns:          mean attention distance (image pixels) per layer and head

A layer's queries are the ones nearest the query points, each drawn once: points that fall on the
same query of a coarse layer (a stride-32 map of a 32 px image has one pixel) share one row.
Each head cell shows the image in grey with that head's softmax over the (b + 2h)² window laid
over it where the window lies (halo pixels outside the image show as the part of the window beyond
the image edge), the query pixel marked and the window outlined; colours run from 0 to the head's
largest weight for that query, which the cell's title gives.
"""
import io
from typing import List, Sequence, Tuple

import numpy as np
from matplotlib import patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from official.vision.ops import preprocess_ops
from official_halonet.models.attention_maps import LayerAttention, mean_distance

CELL_INCHES = 2.0
DPI = 80


def displayable(images: np.ndarray) -> np.ndarray:
  """ImageNet-normalised images (Model Garden's mean / std on 0..255) -> RGB in [0, 1]."""
  mean = np.asarray(preprocess_ops.MEAN_RGB, np.float32)
  std = np.asarray(preprocess_ops.STDDEV_RGB, np.float32)
  return np.clip((np.asarray(images, np.float32) * std + mean) / 255.0, 0.0, 1.0)


def drawn_queries(attention: LayerAttention, points: Sequence[Tuple[float, float]],
                  height: int, width: int) -> List[Tuple[int, int]]:
  """The (block, query) of `attention` nearest each point (fractions of the image's `height` and
  `width`), in the points' order, each once."""
  drawn = []
  for fraction_row, fraction_column in points:
    block, query = attention.nearest_query(fraction_row * height, fraction_column * width)
    if (int(block), int(query)) not in drawn:
      drawn.append((int(block), int(query)))
  return drawn


def grid_shape(attentions: Sequence[LayerAttention], points: Sequence[Tuple[float, float]],
               height: int, width: int) -> Tuple[int, int]:
  """(rows, columns) of cells for an image of `height` × `width`: a row per layer and drawn
  query (`drawn_queries`) plus the distance plot's row."""
  rows = sum(len(drawn_queries(a, points, height, width)) for a in attentions)
  return rows + 1, 1 + max(a.num_heads for a in attentions)


def _reach(attention, block, query, index):
  """(top, left, bottom, right) in image pixels of the keys any head of the query can weigh:
  the whole window, or its centred part when the layer masks the rest (SASA)."""
  weighed = (attention.probabilities[index, block, :, query] > 0).any(axis=0)  # [K]
  centres = attention.keys[block][weighed]
  half = attention.pixel / 2
  return (centres[:, 0].min() - half, centres[:, 1].min() - half,
          centres[:, 0].max() + half, centres[:, 1].max() + half)


def _show_window(ax, background, attention, block, query, head, index):
  """The image (grey under a head's heat map, else in colour), the query marked, the keys it can
  weigh outlined."""
  height, width = background.shape[:2]
  ax.imshow(background, cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0))
  w, pixel = attention.window, attention.pixel
  top, left = attention.keys[block, 0] - pixel / 2
  row, column = attention.queries[block, query]
  if head is not None:
    heat = attention.probabilities[index, block, head, query].reshape(w, w)
    ax.imshow(heat, cmap="inferno", alpha=0.7, vmin=0, vmax=max(float(heat.max()), 1e-12),
              extent=(left, left + w * pixel, top + w * pixel, top), interpolation="nearest")
    ax.set_title(f"head {head + 1} (max {heat.max():.2f})", fontsize=7)
  reach_top, reach_left, reach_bottom, reach_right = _reach(attention, block, query, index)
  ax.add_patch(patches.Rectangle((reach_left, reach_top), reach_right - reach_left,
                                 reach_bottom - reach_top, fill=False, edgecolor="cyan",
                                 linewidth=1))
  ax.plot([column], [row], marker="+", color="lime", markersize=8, markeredgewidth=1.5)
  ax.set_xlim(min(0, reach_left), max(width, reach_right))
  ax.set_ylim(max(height, reach_bottom), min(0, reach_top))
  ax.set_xticks([])
  ax.set_yticks([])


def figure(image: np.ndarray, attentions: Sequence[LayerAttention],
           points: Sequence[Tuple[float, float]], index: int = 0) -> Figure:
  """The grid for image `index` of the probed batch.

  image: [H, W, 3] RGB in [0, 1] (see `displayable`); points: query points as (row, column)
  fractions of the image height and width, e.g. (0.5, 0.5) for the centre; points that fall on
  one query of a layer draw it once (`drawn_queries`).
  """
  grey = np.asarray(image, np.float32).mean(axis=-1)
  height, width = grey.shape
  rows, columns = grid_shape(attentions, points, height, width)
  fig = Figure(figsize=(columns * CELL_INCHES, rows * CELL_INCHES), dpi=DPI)
  FigureCanvasAgg(fig)
  grid = fig.add_gridspec(rows, columns)
  row = 0
  for attention in attentions:
    for block, query in drawn_queries(attention, points, height, width):
      ax = fig.add_subplot(grid[row, 0])
      _show_window(ax, image, attention, block, query, None, index)
      row_px, column_px = attention.queries[block, query]
      ax.set_title(f"{attention.name}\nquery at ({row_px:g}, {column_px:g}) px", fontsize=7)
      for head in range(attention.num_heads):
        _show_window(fig.add_subplot(grid[row, 1 + head]), grey, attention, block, query, head,
                     index)
      row += 1
  ax = fig.add_subplot(grid[rows - 1, :])
  for position, attention in enumerate(attentions):
    distances = mean_distance(attention)
    ax.scatter(np.full(len(distances), position), distances, s=12)
  ax.set_xticks(range(len(attentions)), [a.name for a in attentions], fontsize=6, rotation=15)
  ax.set_ylabel("mean attention\ndistance (px)", fontsize=7)
  ax.tick_params(axis="y", labelsize=6)
  fig.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.05, hspace=0.45, wspace=0.1)
  return fig


def png_bytes(fig: Figure) -> bytes:
  """The figure as PNG bytes of exactly columns·CELL_INCHES·DPI × rows·CELL_INCHES·DPI pixels."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  return buffer.getvalue()
