"""timm's HaloNet weights (PyTorch state dicts) into this project's models, exactly.

    model = official_halonet.models.from_timm("halonet26t", "model.safetensors")
    logits = model(images)   # images [B, 256, 256, 3], normalised as timm's model takes them NCHW

Files: `model.safetensors` (timm's Hugging Face format; read with the safetensors package's NumPy
API, no PyTorch needed) or a PyTorch `.pth` / `.pt` / `.bin` state dict (needs torch installed).

Every tensor of timm's state dict goes to exactly one variable and every variable of the model gets
one; anything missing, left over or of another shape is refused, naming the file and the tensor,
before any variable is assigned. (`num_batches_tracked`, a BN step counter without effect in eval
mode, is the only entry that is read and dropped.) The layouts:

  conv                   OIHW -> HWIO (grouped: [O, I/g, k, k] -> [k, k, I/g, O]); 1×1 convs that
                         are Dense layers here (q, kv) -> [I, O]
  self_attn.kv           timm's rows are per head [k_0 (D), v_0 (Dv), k_1, v_1, ...]; here the
                         key_value kernel is [all keys (N·D) | all values (N·Dv)]
  pos_embed.*_rel        timm's row t holds key-minus-query offset t - (w - 1) - h (it counts the
                         query in window coordinates); here row r holds offset r - (w - 1), so
                         row r = timm's row r + h. The top h rows here (offsets above b + h - 1,
                         which no query reads) get zeros; timm's bottom h rows are ones no query
                         reads there. Strided layers need HaloAttention(query_positions=
                         'subsampled'), which the timm spec rows set.
  BN                     weight, bias, running_mean, running_var -> gamma, beta, moving stats
  SE fc1 / fc2           1×1 convs with bias -> Model Garden SqueezeExcitation reduce / expand
  ECA conv               [1, 1, k] -> Conv1D [k, 1, 1]
  head.fc                [classes, features] -> Dense kernel [features, classes], bias
"""
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from official_halonet.models import factory
from official_halonet.models import specs

IGNORED_SUFFIXES = (".num_batches_tracked",)
SAFETENSORS = (".safetensors",)
TORCH_FILES = (".pth", ".pt", ".bin")


class TimmWeightsError(ValueError):
  """A weights file that does not fit the model; the message names the file and the tensor."""


def read_state(path: str) -> Dict[str, np.ndarray]:
  """{timm tensor name: array} of a .safetensors file or (with torch installed) a .pth file."""
  if not os.path.isfile(path):
    raise TimmWeightsError(f"{path}: no such file")
  if path.endswith(SAFETENSORS):
    from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except (SafetensorError, OSError, ValueError) as e:
      raise TimmWeightsError(f"{path}: not a readable safetensors file ({e})") from None
  if path.endswith(TORCH_FILES):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise TimmWeightsError(f"{path}: reading a PyTorch file needs torch installed; timm's "
                             f"model.safetensors files need only the safetensors package"
                             ) from None
    try:
      state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
      raise TimmWeightsError(f"{path}: not a readable PyTorch file ({e})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}
  raise TimmWeightsError(f"{path}: unknown weights format (expected {SAFETENSORS + TORCH_FILES})")


def _conv(w):
  return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _dense(w):
  return w[:, :, 0, 0].T  # 1×1 conv [O, I, 1, 1] -> [I, O]


def _plan(model: tf_keras.Model, spec: specs.ModelSpec):
  """[(timm name, variable, transform)] for every variable of `model` (a timm spec row)."""
  backbone = model.backbone
  plan: List[Tuple[str, tf.Variable, object]] = []

  def layer(name):
    return backbone.get_layer(name)

  def conv_bn(timm_name, conv_name, bn_name):
    plan.append((f"{timm_name}.conv.weight", layer(conv_name).kernel, _conv))
    bn(f"{timm_name}.bn", bn_name)

  def bn(timm_name, bn_name):
    norm = layer(bn_name)
    for suffix, variable in (("weight", norm.gamma), ("bias", norm.beta),
                             ("running_mean", norm.moving_mean),
                             ("running_var", norm.moving_variance)):
      plan.append((f"{timm_name}.{suffix}", variable, None))

  names = {l.name for l in backbone.layers}
  if spec.stem == "tiered":
    for i in range(1, 4):
      conv_bn(f"stem.conv{i}", f"stem{i}_conv", f"stem{i}_bn")
  else:
    conv_bn("stem.conv1", "stem_conv", "stem_bn")
  for stage, repeats in enumerate(spec.blocks):
    for i in range(repeats):
      t, q = f"stages.{stage}.{i}", f"stage{stage + 1}_block{i + 1}"
      conv_bn(f"{t}.conv1_1x1", f"{q}_1_conv", f"{q}_1_bn")
      if spec.block_type(stage, i) == "conv":
        conv_bn(f"{t}.conv2_kxk", f"{q}_conv2", f"{q}_2_bn")
        if f"{q}_se" in names:
          se = layer(f"{q}_se")
          for timm_fc, keras_conv in (("fc1", se._se_reduce), ("fc2", se._se_expand)):  # pylint: disable=protected-access
            plan.append((f"{t}.attn.{timm_fc}.weight", keras_conv.kernel, _conv))
            plan.append((f"{t}.attn.{timm_fc}.bias", keras_conv.bias, None))
        if f"{q}_eca" in names:
          plan.append((f"{t}.attn.conv.weight", layer(f"{q}_eca").conv.kernel,
                       lambda w: np.transpose(w, (2, 1, 0))))
      else:
        halo = layer(f"{q}_halo")
        plan.append((f"{t}.self_attn.q.weight", halo.query.kernel, _dense))
        plan.append((f"{t}.self_attn.kv.weight", halo.key_value.kernel, _key_value(halo)))
        for timm_table, table in (("height_rel", halo.rel_pos_h), ("width_rel", halo.rel_pos_w)):
          plan.append((f"{t}.self_attn.pos_embed.{timm_table}", table, _table(halo)))
        bn(f"{t}.post_attn", f"{q}_2_bn")
      conv_bn(f"{t}.conv3_1x1", f"{q}_3_conv", f"{q}_3_bn")
      if f"{q}_shortcut_conv" in names:
        conv_bn(f"{t}.shortcut", f"{q}_shortcut_conv", f"{q}_shortcut_bn")
  if "final_conv" in names:
    conv_bn("final_conv", "final_conv", "final_bn")
  plan.append(("head.fc.weight", classifier(model).kernel, np.transpose))
  plan.append(("head.fc.bias", classifier(model).bias, None))
  return plan


def classifier(model: tf_keras.Model) -> tf_keras.layers.Dense:
  """The Dense classifier of a Model Garden ClassificationModel."""
  return [l for l in model.layers if isinstance(l, tf_keras.layers.Dense)][-1]


def _key_value(halo):
  """timm's per-head interleaved [N·(D + Dv), C, 1, 1] kv conv -> [C, N·D | N·Dv] Dense kernel."""
  heads, key = halo.num_heads, halo.head_dim
  value = halo.value_dim // heads

  def convert(w):
    w = _dense(w).reshape(w.shape[1], heads, key + value)
    return np.concatenate([w[..., :key].reshape(w.shape[0], -1),
                           w[..., key:].reshape(w.shape[0], -1)], axis=1)
  return convert


def _table(halo):
  """timm's [2w - 1, D] table -> this project's: row r = timm's row r + h, the top h rows zero."""
  shift = halo.halo_size

  def convert(t):
    out = np.zeros_like(t)
    out[:t.shape[0] - shift] = t[shift:]
    return out
  return convert


def _check_geometry(spec: specs.ModelSpec):
  """The layout above holds for timm's geometry only: subsampled strided positions."""
  if spec.query_positions != "subsampled":
    raise TimmWeightsError("timm's weights need a timm spec row (query_positions='subsampled'); "
                           f"these are: {', '.join(specs.TIMM_MODELS)}")


def assign_timm_weights(model: tf_keras.Model, spec: specs.ModelSpec, state: Dict[str, np.ndarray],
                        path: str) -> int:
  """Assigns timm state dict `state` (read from `path`) to `model`; returns tensors assigned.

  Checks everything first: raises TimmWeightsError naming `path` and the first tensor that is
  missing, unexpected or mis-shaped, with nothing assigned.
  """
  _check_geometry(spec)
  plan = _plan(model, spec)
  covered = {id(variable) for _, variable, _ in plan}
  uncovered = [v.name for v in model.variables if id(v) not in covered]
  if uncovered:  # a spec feature this converter does not map
    raise TimmWeightsError(f"{path}: no timm tensor maps to model variable(s) "
                           f"{', '.join(uncovered[:5])}")
  values = []
  for name, variable, convert in plan:
    if name not in state:
      raise TimmWeightsError(f"{path}: tensor {name!r} is missing (the file holds "
                             f"{len(state)} tensors; is it timm's {spec_name(spec)}?)")
    array = np.asarray(state[name])
    if not np.issubdtype(array.dtype, np.floating):
      raise TimmWeightsError(f"{path}: tensor {name!r} has dtype {array.dtype}, not floating point")
    try:
      value = np.asarray(convert(array) if convert else array, dtype=np.float32)
    except ValueError:  # a layout conversion that cannot apply to this shape
      value = None
    if value is None or tuple(value.shape) != tuple(variable.shape):
      raise TimmWeightsError(
          f"{path}: tensor {name!r} has shape {list(array.shape)}, which does not fit "
          f"{variable.name} {variable.shape.as_list()} (is it timm's {spec_name(spec)}?)")
    values.append((variable, value))
  used = {name for name, _, _ in plan}
  unexpected = sorted(k for k in state if k not in used and not k.endswith(IGNORED_SUFFIXES))
  if unexpected:
    raise TimmWeightsError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} "
                           f"in all that the model has no place for; is it timm's "
                           f"{spec_name(spec)}?)")
  for variable, value in values:
    variable.assign(value)
  return len(values)


def spec_name(spec: specs.ModelSpec) -> str:
  return next((name for name, row in specs.MODELS.items() if row is spec), "model")


def from_timm(name: str, weights_path: str, num_classes: int = 0) -> tf_keras.Model:
  """timm's `name` classifier with the weights of `weights_path` loaded.

  Args:
    name: a timm spec row: 'halonet_h1', 'halonet26t', 'sehalonet33ts', 'halonet50ts',
      'eca_halonext26ts' (or their '_mini' test versions).
    weights_path: timm's model.safetensors (or a .pth state dict, with torch installed).
    num_classes: classifier width; 0 takes it from the file's head.fc.weight.

  Returns:
    Model Garden's ClassificationModel: float32 [B, S, S, 3] images, normalised as timm's model
    takes them ((x / 255 - mean) / std, NHWC instead of NCHW) -> [B, classes] logits. S must be a
    multiple of 32·b (256 for the published models), as in timm.
  """
  if name not in specs.TIMM_MODELS:
    raise TimmWeightsError(f"{name!r} is not one of timm's HaloNets here: "
                           f"{', '.join(specs.TIMM_MODELS)}")
  state = read_state(weights_path)
  if not num_classes:
    head = state.get("head.fc.weight")
    if head is None or np.ndim(head) != 2:
      raise TimmWeightsError(f"{weights_path}: tensor 'head.fc.weight' is missing or not 2-D, "
                             f"so the class count is unknown")
    num_classes = int(np.shape(head)[0])
  model = factory.build(name, num_classes=num_classes)
  assign_timm_weights(model, specs.get_spec(name), state, weights_path)
  return model
