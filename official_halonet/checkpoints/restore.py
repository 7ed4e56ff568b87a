"""The one strict restore of a checkpoint into a model, for export and for fine-tuning.

    restore(model, path, use_ema=None, modules='all', resize_tables=False)

pairs every variable of `model` with the checkpoint (checkpoints/match.py), and assigns nothing
unless every variable can be assigned; otherwise a CheckpointMismatchError names each variable,
both shapes and the setting that differs. Export (export/saved_model.py) restores a run's own
checkpoint as it is: modules='all', no resizing, EMA averages when the run used EMA. Fine-tuning
(the paper's ImageNet-21k -> ImageNet recipe; `HaloNetClassificationTask.initialize` when
`experiment.init_checkpoint` is set) restores with modules='backbone' (the classifier's kernel and
bias set to zeros, as the paper re-initialises it) and resize_tables=True, so a fine-tuning run is

    experiment.init_checkpoint = '/ckpt/h4_i21k'          # directory (latest) or checkpoint prefix
    experiment.init_checkpoint_modules = 'backbone'       # zero classifier ('all': copy it too)
    experiment.block_size = 12                            # b=8,h=2 at 256 px -> b=12,h=2 at 384 px

Relative-position tables. A HaloAttention table holds one row per relative offset o in
[-(w-1), w-1] of a window of w = b + 2h pixels (row o + w - 1; layers/relative_position.py), but a
layer reads only part of it: |o| <= b + h - 1 at stride 1, -(b - s + h) <= o <= b + h - 1 with
queries subsampled by s, |o| <= h in a masked (SASA) window (`HaloAttention.reachable_offsets`).
The other rows never get a gradient and keep their random initial values, so resizing reads only
the rows the pretrained layer could read, which needs the pretraining's b and h
(`pretrained_block_size` / `pretrained_halo_size`, by default the model's published ones, e.g.
b=8, h=2 for h4_i21k). When the readable offsets change (a new table size, or the same size
with another b / h), `resize_relative_table` (layers/table_resize.py) builds the new table:

  unmasked halo attention (HaloNet): linear interpolation, as the paper does. The new layer's
      readable offsets map linearly onto the old layer's (each side of offset 0 on its own, since
      a strided layer reads fewer negative offsets), and the old table is linearly interpolated
      at the mapped offset. Offset 0 and the outermost readable offsets keep their rows, and so
      does every old offset o at k*o when the new reach is k times the old. This follows the image:
      fine-tuning at a higher resolution with a larger window, an offset o' covers the content a
      proportionally smaller offset covered in pretraining (as ViT and BiT interpolate position
      embeddings when the resolution changes). E.g. b=8,h=2 -> b=12,h=2 at stride 1 maps offsets
      |o'| <= 13 onto |o| <= 9, never touching the untrained rows |o| = 10, 11.
  masked windows (SASA, `window='centered'`): every offset keeps its own row.

In both, a new offset beyond the old layer's reach takes the nearest trained row, and rows the new
layer cannot read copy the row of its nearest readable offset, so no untrained value survives.

Any other shape difference (another model, head width, class count with modules='all') is an
error that names the variables, the shapes and the setting that differs.
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from official_halonet.checkpoints import match as checkpoints
from official_halonet.layers import relative_position
from official_halonet.layers import table_resize
from official_halonet.models import specs

MODULES = ("all", "backbone")


@dataclasses.dataclass
class RestoreSummary:
  """What `restore` did."""
  checkpoint: str
  restored: int  # variables copied unchanged
  resized: Dict[str, str]  # variable name -> 'interpolated [23, 8] -> [31, 8]' / 'recentred ...'
  zeroed: List[str]  # classifier variables set to zeros
  used_ema: bool
  step: Optional[int] = None  # the trainer's global step stored in the checkpoint


def _table_layers(model) -> Dict[int, object]:
  """id(table variable) -> the attention layer that owns it."""
  owners = {}
  for module in model.submodules:
    for name in relative_position.TABLE_NAMES:
      table = getattr(module, name, None)
      if isinstance(table, tf.Variable):
        owners[id(table)] = module
  return owners


def _pretrained_geometry(model, block_size: Optional[int], halo_size: Optional[int]):
  """(b, h) the checkpoint's unmasked halo layers were trained with; None: the backbone spec's
  (the published pretraining setting), or each layer's own when the backbone has no spec."""
  backbone = getattr(model, "backbone", None)
  # The published spec (what the checkpoint was pretrained with), not the fine-tuning overrides.
  spec = (specs.get_spec(backbone.config.model_id)
          if isinstance(getattr(backbone, "spec", None), specs.ModelSpec) else None)
  if block_size is None and spec is not None:
    block_size = spec.block_size
  if halo_size is None and spec is not None:
    halo_size = spec.halo_size
  return block_size, halo_size


def _table_reaches(entry, layer, stored_rows: int, block_size, halo_size):
  """(old reach, new reach) of a table, or an error line when (b, h) cannot give its rows."""
  name = entry.name.split(":")[0]
  if layer.window == "centered":  # the mask keeps |o| <= h whatever b; h is the model's kernel
    block_size, halo_size = (stored_rows + 1) // 2 - 2 * layer.halo_size, layer.halo_size
  else:
    block_size = layer.block_size if block_size is None else block_size
    halo_size = layer.halo_size if halo_size is None else halo_size
  if block_size < 1 or relative_position.table_rows(block_size + 2 * halo_size) != stored_rows:
    return None, (
        f"  {name}: the checkpoint's table has {stored_rows} rows, but the pretraining block "
        f"{block_size} and halo {halo_size} give 2(b+2h)-1 = "
        f"{relative_position.table_rows(block_size + 2 * halo_size)}; set "
        f"experiment.init_block_size / init_halo_size (restore's pretrained_block_size "
        f"/ pretrained_halo_size) to the b and h the checkpoint was trained with")
  return (layer.reachable_offsets(block_size, halo_size), layer.reachable_offsets()), None


@dataclasses.dataclass
class _Plan:
  """What restore would assign, and what it cannot."""
  values: List[Tuple[tf.Variable, np.ndarray]] = dataclasses.field(default_factory=list)
  resized: Dict[str, str] = dataclasses.field(default_factory=dict)
  zeroed: List[str] = dataclasses.field(default_factory=list)
  problems: List[object] = dataclasses.field(default_factory=list)  # match entries
  geometry_errors: List[str] = dataclasses.field(default_factory=list)


def _plan(model, found, use_ema: bool, modules: str, resize_tables: bool, geometry) -> _Plan:
  """The value of every variable of `model` (a zero head, a resized table, or the stored one)."""
  owners, plan = _table_layers(model), _Plan()
  for entry in found.entries:
    name = entry.name.split(":")[0]
    if not entry.in_backbone and modules == "backbone":
      plan.values.append((entry.variable,
                          np.zeros(entry.model_shape, entry.variable.dtype.as_numpy_dtype)))
      plan.zeroed.append(name)
      continue
    stored = entry.checkpoint_shape
    layer = owners.get(id(entry.variable))
    if (resize_tables and entry.in_backbone and layer is not None and stored is not None
        and len(stored) == 2
        and stored[1] == entry.model_shape[1]):
      reaches, error = _table_reaches(entry, layer, stored[0], *geometry)
      if error:
        plan.geometry_errors.append(error)
        continue
      if not (entry.matches and reaches[0] == reaches[1]):
        interpolate = layer.window != "centered"
        plan.values.append((entry.variable, table_resize.resize_relative_table(
            found.value(entry, use_ema), reaches[0], entry.model_shape[0], reaches[1],
            interpolate)))
        plan.resized[name] = (f"{'interpolated' if interpolate else 'recentred'} "
                              f"{list(stored)} -> {list(entry.model_shape)}, offsets "
                              f"{list(reaches[0])} -> {list(reaches[1])}")
        continue
    if entry.matches:
      plan.values.append((entry.variable, found.value(entry, use_ema)))
      continue
    plan.problems.append(entry)
  return plan


def restore(model: tf.Module, checkpoint_path: str, use_ema: Optional[bool] = None,
            modules: str = "all", resize_tables: bool = False,
            pretrained_block_size: Optional[int] = None,
            pretrained_halo_size: Optional[int] = None,
            context: str = "") -> RestoreSummary:
  """Assigns every variable of `model` from a checkpoint, or nothing.

  Args:
    model: a Model Garden ClassificationModel (with a HaloNet backbone), already built.
    checkpoint_path: a checkpoint prefix, or a directory (its latest checkpoint).
    use_ema: read the EMA averages the checkpoint holds (None: when it holds them; True when it
      holds none is an error).
    modules: 'all': every variable from the checkpoint, same shapes; 'backbone': backbone from
      the checkpoint, classifier kernel and bias zeros (the paper's fine-tuning).
    resize_tables: relative-position tables whose readable offsets changed are resized
      (table_resize.resize_relative_table); False: they must match like any variable.
    pretrained_block_size, pretrained_halo_size: with resize_tables, b and h of the checkpoint's
      unmasked halo layers (None: the backbone model's published b / h). They fix which table
      rows were trained.
    context: the first line of a mismatch error (default: which checkpoint and modules).

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
        f"{found.path} holds no EMA averages (the run had no ema_decay); use_ema=True cannot be "
        f"met (to export the raw weights, bind experiment.ema_decay = 0)")
  plan = _plan(model, found, use_ema, modules, resize_tables,
               _pretrained_geometry(model, pretrained_block_size, pretrained_halo_size))
  values, resized, zeroed = plan.values, plan.resized, plan.zeroed
  problems, geometry_errors = plan.problems, plan.geometry_errors
  if problems or found.unused_keys or geometry_errors:
    hint = ("" if modules == "backbone" or not resize_tables else
            "\n  (to fine-tune on other classes, set experiment.init_checkpoint_modules = "
            "'backbone': the classifier then starts from zeros)")
    described = "\n".join(filter(None, [checkpoints.describe_mismatch(found, problems)]
                                  + geometry_errors))
    context = context or (f"cannot initialise the model from {found.path} "
                          f"(init_checkpoint_modules={modules!r})")
    raise checkpoints.CheckpointMismatchError(f"{context}:\n{described}{hint}")
  for variable, value in values:
    variable.assign(value)
  summary = RestoreSummary(checkpoint=found.path, restored=len(values) - len(resized) - len(zeroed),
                           resized=resized, zeroed=zeroed, used_ema=use_ema, step=found.step)
  logging.info("Initialised from %s: %d variables copied, %d relative-position tables resized "
               "(%s), %d classifier variables zeroed%s", found.path, summary.restored, len(resized),
               "; ".join(f"{k}: {v}" for k, v in resized.items()) or "none", len(zeroed),
               ", EMA averages" if use_ema else "")
  return summary
