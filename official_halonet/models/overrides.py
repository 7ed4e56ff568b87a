"""Overrides of a named model: `resolve` applies a backbone config's fields to its `ModelSpec`.

  resolve(config) -> ModelSpec  the named spec (specs.get_spec) with the HaloNetConfig's
                                overrides applied, each field and the widths they give checked
  OverrideError                 a ValueError whose `field` names the HaloNetConfig field that
                                cannot build the model; its message (one line) names the model
  SHAPE_OVERRIDES               the fields that resize a named model (its shape)

The checks are pure Python on the config and the resolved spec: no layer is built, so a bad
override fails before any TensorFlow work, with the same error wherever the model is built
(models.build, HaloNet, the classification and detection experiments).
"""
import dataclasses
from typing import Tuple

from official_halonet.layers import fused_attention
from official_halonet.models.config import HaloNetConfig
from official_halonet.models.specs import ModelSpec, get_spec

FUSED_ATTENTION = fused_attention.SETTINGS  # HaloNetConfig.fused_attention's values
# The HaloNetConfig fields that resize a named model; see resolve.
SHAPE_OVERRIDES = ("blocks", "base_width", "stem_width", "head_dim", "num_heads")


class OverrideError(ValueError):
  """A HaloNetConfig field that cannot build its model: `field` names it, the message says why."""

  def __init__(self, field: str, message: str):
    super().__init__(message)
    self.field = field


def resolve(config: HaloNetConfig) -> ModelSpec:
  """The spec a model is built from: the named spec with the backbone config's overrides.

  None keeps the spec's value; halo_size 0 means no halo; se_ratio 0 and final_width 0 remove
  that layer. The shape overrides resize the named model, keeping its stage types, stem, b, h and
  SE: blocks (4 per-stage block counts), base_width (d_0), stem_width, and the head rule, either
  head_dim (heads = d_i / head_dim) or num_heads (4 per-stage counts), which replaces the spec's.
  A bad field raises a one-line OverrideError (a ValueError) naming the model and the field.
  """
  try:
    spec = get_spec(config.model_id)
  except ValueError as e:
    raise OverrideError("model_id", str(e)) from None
  where = f"model {config.model_id!r}"
  _check_scalars(config, where)
  if config.head_dim is not None and config.num_heads is not None:
    raise OverrideError("num_heads", f"{where}: give head_dim or num_heads, not both (head_dim="
                        f"{config.head_dim}, num_heads={config.num_heads!r})")
  shape = {}
  if config.blocks is not None:
    if spec.lists_blocks:
      raise OverrideError("blocks", f"{where}: blocks cannot be overridden, the model lists its "
                          f"blocks one by one (stage_types)")
    shape["blocks"] = _per_stage("blocks", config.blocks, where)
  if config.num_heads is not None:
    shape.update(num_heads=_per_stage("num_heads", config.num_heads, where), head_dim=None)
  for name in ("base_width", "stem_width", "head_dim"):
    if getattr(config, name) is not None:
      shape[name] = _positive(name, getattr(config, name), where)
  if config.head_dim is not None:
    shape["num_heads"] = None
  kept = {name: getattr(config, name) for name in ("block_size", "halo_size", "se_ratio",
                                                    "final_width")}
  resolved = dataclasses.replace(
      spec, **shape, **{k: v for k, v in kept.items() if v is not None})
  if shape:
    _check_widths(resolved, where)
  return resolved


def _check_scalars(config: HaloNetConfig, where: str) -> None:
  """block_size >= 1, halo_size and final_width >= 0, se_ratio and the drop rate in [0, 1), a
  known fused_attention."""
  if config.block_size is not None:
    _positive("block_size", config.block_size, where)
  for name in ("halo_size", "final_width"):
    value = getattr(config, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
      raise OverrideError(name, f"{where}: {name} must be an integer >= 0, got {value!r}")
  for name in ("se_ratio", "stochastic_depth_drop_rate"):
    value = getattr(config, name)
    if value is not None and not 0.0 <= value < 1.0:
      raise OverrideError(name, f"{where}: {name} must be in [0, 1), got {value!r}")
  if config.fused_attention not in FUSED_ATTENTION:
    raise OverrideError("fused_attention", f"{where}: fused_attention must be one of "
                        f"{FUSED_ATTENTION}, got {config.fused_attention!r}")


def _positive(name: str, value, where: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise OverrideError(name, f"{where}: {name} must be a positive integer, got {value!r}")
  return value


def _per_stage(name: str, values, where: str) -> Tuple[int, int, int, int]:
  if (isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != 4
      or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)):
    raise OverrideError(name, f"{where}: {name} must list 4 positive integers, one per stage, "
                        f"got {values!r}")
  return tuple(values)


def _check_widths(spec: ModelSpec, where: str) -> None:
  """Every width the overridden spec gives must split into its heads and conv groups."""
  if spec.stem == "sasa" and spec.stem_width % 4:
    raise OverrideError("stem_width", f"{where}: stem_width {spec.stem_width} must be a multiple "
                        f"of 4, the SASA stem's heads")
  if spec.stem == "tiered" and 3 * spec.stem_width // 8 < 1:
    raise OverrideError("stem_width", f"{where}: stem_width {spec.stem_width} is below 3, so the "
                        f"tiered stem's first conv (3/8 of it) would have no channels")
  for stage, repeats in enumerate(spec.blocks):
    width = spec.width(stage)
    types = {spec.block_type(stage, i) for i in range(repeats)}
    if "conv" in types and spec.group_width and width % spec.group_width:
      raise OverrideError("base_width", f"{where}: base_width {spec.base_width} gives stage "
                          f"{stage + 1} width {width}, not a multiple of group_width "
                          f"{spec.group_width}")
    if not types & {"halo", "sasa"}:
      continue
    if spec.head_dim and width % spec.head_dim:
      raise OverrideError("head_dim", f"{where}: head_dim {spec.head_dim} does not divide stage "
                          f"{stage + 1}'s width {width} (base_width {spec.base_width} · 2^{stage})")
    heads = spec.heads(stage)
    dims = [("attention", width)] if "sasa" in types else []
    if "halo" in types:
      dims += [("query/key", spec.key_dim(stage)), ("value", spec.value_dim(stage))]
    rule = f"width / head_dim {spec.head_dim}" if spec.head_dim else "num_heads"
    for kind, dim in dims:
      if dim % heads:
        raise OverrideError("head_dim" if spec.head_dim else "num_heads",
                            f"{where}: {heads} heads ({rule}) do not divide stage {stage + 1}'s "
                            f"{kind} width {dim} (base_width {spec.base_width} · 2^{stage})")
