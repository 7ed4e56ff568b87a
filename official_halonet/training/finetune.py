"""Fine-tuning from a pretrained checkpoint (the paper's ImageNet-21k -> ImageNet recipe).

    restore_pretrained(model, '/ckpt/h4_i21k', modules='backbone')

reads a checkpoint written by a classification run (Model Garden's trainer checkpoint), copies
every backbone variable into `model`, resizes the relative-position tables whose window changed,
and sets the classifier's kernel and bias to zeros (the paper re-initialises the classifier to
zeros). `HaloNetClassificationTask.initialize` calls it when `experiment.init_checkpoint` is set,
so a fine-tuning run is

    experiment.init_checkpoint = '/ckpt/h4_i21k'          # directory (latest) or checkpoint prefix
    experiment.init_checkpoint_modules = 'backbone'       # zero classifier ('all': copy it too)
    experiment.block_size = 12                            # b=8,h=2 at 256 px -> b=12,h=2 at 384 px

Relative-position tables. A HaloAttention table holds one row per relative offset o in
[-(w-1), w-1] of a window of w = b + 2h pixels (row o + w - 1; layers/relative_position.py). When
b or h changes, w changes and so does the table:

  unmasked halo attention (HaloNet): `interpolate_relative_table`, the paper's linear
      interpolation. The table is read as samples of a function of the offset scaled to the window,
      o / (w - 1) in [-1, 1]; the new table samples the same function at o' / (w' - 1). So new
      offset o' takes the old value at offset o' (w - 1) / (w' - 1), linearly interpolated between
      the two nearest old offsets. Matching offsets keep their values: offset 0 and the outermost
      offsets +-(w-1) -> +-(w'-1) always, and every old offset o -> k*o when (w'-1) = k (w-1).
      This follows the image: fine-tuning at a higher resolution with a larger window, a pixel
      offset o' covers the content an offset of o'(w-1)/(w'-1) covered in pretraining (as ViT
      and BiT interpolate position embeddings when the resolution changes).
  masked windows (SASA, `window='centered'`): only offsets |o| <= h can ever be attended to, and
      they do not depend on b; `recentre_relative_table` keeps every offset's row as it is (crops
      or pads at the ends, padding with the outermost row, which the mask never reads).

Any other shape difference (another model, head width, class count with modules='all') is an
error that names the variables, the shapes and the setting that differs.
"""
import dataclasses
from typing import Dict, List, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from official_halonet.export import checkpoints

MODULES = ("all", "backbone")


def _window(rows: int, what: str) -> int:
  if rows < 1 or rows % 2 != 1:
    raise ValueError(f"{what}: a relative-position table has 2w-1 (odd) rows, got {rows}")
  return (rows + 1) // 2


def interpolate_relative_table(table, new_rows: int) -> np.ndarray:
  """Resizes a [2w-1, D] table to [new_rows, D] by linear interpolation along the offset axis.

  New offset o' (row o' + w' - 1) gets the old table linearly interpolated at offset
  o' (w - 1) / (w' - 1): offset 0 and the window's outermost offsets keep their values exactly,
  and so does every old offset o at its new offset k*o when w' - 1 = k (w - 1). Same size: the
  table unchanged. Float64 arithmetic, returned in the table's dtype.
  """
  table = np.asarray(table)
  if table.ndim != 2:
    raise ValueError(f"expected a [rows, width] table, got shape {list(table.shape)}")
  old_w = _window(table.shape[0], "table")
  new_w = _window(new_rows, "new_rows")
  if new_w == old_w:
    return table.copy()
  if old_w == 1:
    return np.repeat(table, new_rows, axis=0)
  offsets = np.arange(-(new_w - 1), new_w, dtype=np.float64)
  source = offsets * (old_w - 1) / max(new_w - 1, 1) + (old_w - 1)  # fractional old row
  low = np.clip(np.floor(source).astype(np.int64), 0, table.shape[0] - 1)
  high = np.clip(low + 1, 0, table.shape[0] - 1)
  frac = (source - low)[:, None]
  values = table.astype(np.float64)
  return ((1.0 - frac) * values[low] + frac * values[high]).astype(table.dtype)


def recentre_relative_table(table, new_rows: int) -> np.ndarray:
  """Resizes a [2w-1, D] table to [new_rows, D] keeping every offset's row unchanged.

  Offsets present in both tables keep their rows; a larger table repeats the outermost old row for
  the new outer offsets. For masked (SASA) windows, whose reachable offsets |o| <= h do not
  depend on the block size.
  """
  table = np.asarray(table)
  old_w = _window(table.shape[0], "table")
  new_w = _window(new_rows, "new_rows")
  offsets = np.arange(-(new_w - 1), new_w)
  rows = np.clip(offsets + old_w - 1, 0, table.shape[0] - 1)
  return table[rows].copy()


@dataclasses.dataclass
class RestoreSummary:
  """What `restore_pretrained` did."""
  checkpoint: str
  restored: int  # variables copied unchanged
  resized: Dict[str, str]  # variable name -> 'interpolated [23, 8] -> [31, 8]' / 'recentred ...'
  zeroed: List[str]  # classifier variables set to zeros
  used_ema: bool


def _table_layers(model) -> Dict[int, object]:
  """id(table variable) -> the attention layer that owns it."""
  owners = {}
  for module in model.submodules:
    for name in checkpoints.REL_POS_TABLES:
      table = getattr(module, name, None)
      if isinstance(table, tf.Variable):
        owners[id(table)] = module
  return owners


def restore_pretrained(model: tf.Module, checkpoint_path: str, modules: str = "backbone",
                       use_ema: Optional[bool] = None) -> RestoreSummary:
  """Initialises a classification model from a pretrained classification checkpoint.

  Args:
    model: a Model Garden ClassificationModel (with a HaloNet backbone), already built.
    checkpoint_path: a checkpoint prefix, or a directory (its latest checkpoint).
    modules: 'backbone': backbone from the checkpoint, classifier kernel and bias zeros (the
      paper's fine-tuning); 'all': the classifier is copied too and must have the same shape.
    use_ema: read the EMA averages the checkpoint holds (None: when it holds them).

  Returns:
    A RestoreSummary. Nothing is assigned unless every variable can be.

  Raises:
    checkpoints.CheckpointMismatchError naming every variable that cannot be restored.
  """
  if modules not in MODULES:
    raise ValueError(f"modules must be one of {MODULES}, got {modules!r}")
  found = checkpoints.match(model, checkpoint_path)
  use_ema = found.has_ema if use_ema is None else use_ema
  if use_ema and not found.has_ema:
    raise checkpoints.CheckpointMismatchError(
        f"{found.path} holds no EMA averages (the run had no ema_decay); use_ema=True cannot be met")
  owners = _table_layers(model)
  values, resized, zeroed, problems = [], {}, [], []
  for entry in found.entries:
    name = entry.name.split(":")[0]
    if not entry.in_backbone and modules == "backbone":
      values.append((entry.variable,
                     np.zeros(entry.model_shape, entry.variable.dtype.as_numpy_dtype)))
      zeroed.append(name)
      continue
    if entry.matches:
      values.append((entry.variable, found.value(entry, use_ema)))
      continue
    stored = entry.checkpoint_shape
    if (entry.in_backbone and entry.is_rel_pos_table and stored is not None and len(stored) == 2
        and stored[1] == entry.model_shape[1]):
      layer = owners.get(id(entry.variable))
      masked = getattr(layer, "window", "block") == "centered"
      resize = recentre_relative_table if masked else interpolate_relative_table
      values.append((entry.variable, resize(found.value(entry, use_ema), entry.model_shape[0])))
      resized[name] = (f"{'recentred' if masked else 'interpolated'} {list(stored)} -> "
                       f"{list(entry.model_shape)}")
      continue
    problems.append(entry)
  if problems or found.unused_keys:
    hint = ("" if modules == "backbone" else
            "\n  (to fine-tune on other classes, set experiment.init_checkpoint_modules = "
            "'backbone': the classifier then starts from zeros)")
    raise checkpoints.CheckpointMismatchError(
        f"cannot initialise the model from {found.path} (init_checkpoint_modules={modules!r}):\n"
        f"{checkpoints.describe_mismatch(found, problems)}{hint}")
  for variable, value in values:
    variable.assign(value)
  summary = RestoreSummary(checkpoint=found.path, restored=len(values) - len(resized) - len(zeroed),
                           resized=resized, zeroed=zeroed, used_ema=use_ema)
  logging.info("Initialised from %s: %d variables copied, %d relative-position tables resized "
               "(%s), %d classifier variables zeroed%s", found.path, summary.restored, len(resized),
               "; ".join(f"{k}: {v}" for k, v in resized.items()) or "none", len(zeroed),
               ", EMA averages" if use_ema else "")
  return summary
