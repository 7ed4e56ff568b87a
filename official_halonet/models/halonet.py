"""HaloNet backbone: every model of specs.MODELS as a Model Garden vision backbone.

A functional tf_keras.Model with endpoints {'2', '3', '4', '5'} (strides 4, 8, 16, 32), built
from one HaloNetConfig (models/config.py; get_config keeps it as a dict), BN / activation /
sync-BN from Model Garden's norm-activation settings, an L2 kernel regularizer, stochastic depth
growing linearly with block depth, and zero-initialised gamma in the last BN of every residual
branch.

  stem   7×7/2 conv, BN, act, 3×3/2 max-pool   (or a 4×4/4 linear patch embedding + BN, or SASA's
         attention stem: attention within each 4×4 pooling window with position-mixed values, BN,
         act, 4×4/4 max-pool over the same windows)
  stage  blocks of: 1×1 conv d, BN, act -> spatial op (halo / SASA attention or 3×3 conv), BN, act
         [-> SE] -> 1×1 conv r_b·d, BN(γ=0) -> stochastic depth -> + shortcut -> act
         The shortcut is a 1×1 conv + BN (strided like the block) where the shape changes; the first
         block of stages 2-4 downsamples (strided attention / strided conv / SASA average pooling).
  head   optional 1×1 conv to d_f, BN, act, on endpoint '5' (classification adds pooling + FC).

The timm rows of specs.py add: a 'tiered' stem (3×3/2 conv to 3/8 of the stem width, 3×3 conv to
1/2, 3×3 conv to the full width, each with BN and act; then the max-pool, or with stem_pool=False
the last conv strided instead), per-block types within a stage, grouped 3×3 convs, ECA, and
PyTorch's symmetric padding of strided windows (padding='symmetric').

Input [B, H, W, 3] for any H, W (attention pads to multiples of b and crops back), so endpoint
level l has spatial size ceil(H / 2^l), exactly as a convolutional ResNet's.
"""
from typing import Any, Dict, Mapping, Optional, Union

import tensorflow as tf
import tf_keras

from official.modeling import tf_utils
from official.vision.modeling.layers import nn_layers
from official_halonet.layers import (EfficientChannelAttention, HaloAttention, Pad2D,
                                     SASAAttention, SpatiallyAwareAttention)
from official_halonet.layers import padding
from official_halonet.models import config as model_config
from official_halonet.models import overrides as model_overrides
from official_halonet.models import specs
from official_halonet.models.config import HaloNetConfig

layers = tf_keras.layers


def _config_of(config: Union[HaloNetConfig, Mapping[str, Any], str]) -> HaloNetConfig:
  """A copy of `config` as a HaloNetConfig; a model name is the config without overrides, a
  mapping its fields (get_config's form)."""
  if isinstance(config, str):
    return HaloNetConfig(model_id=config)
  if isinstance(config, HaloNetConfig):
    return HaloNetConfig(config.as_dict())
  if hasattr(config, "items"):  # a dict, or Keras' tracked wrapper of one
    return HaloNetConfig(dict(config.items()))
  raise TypeError(f"HaloNet: config must be a HaloNetConfig or a model name, got "
                  f"{type(config).__name__}")


@tf_keras.utils.register_keras_serializable(package="HaloNet")
class HaloNet(tf_keras.Model):
  """HaloNet / SASA / hybrid backbone built from a named `ModelSpec` (see specs.py).

  Args:
    config: the backbone config (models.HaloNetConfig: a name from specs.MODELS and its
      overrides, which overrides.resolve applies and validates), or just a model name.
    input_specs: tf_keras.layers.InputSpec of the input, [B, H, W, 3] (H, W may be None).
    activation, use_sync_bn, norm_momentum, norm_epsilon: Model Garden norm-activation settings;
      activation / norm_momentum / norm_epsilon None take the spec's (specs.ModelSpec).
    kernel_initializer, kernel_regularizer, bias_regularizer: for every conv and projection.
  Outputs {'2': [B, H/4, W/4, C_2], ..., '5': [B, H/32, W/32, C_5]} (sides rounded up).
  """

  def __init__(self,
               config: Union[HaloNetConfig, str] = "h0",
               input_specs: layers.InputSpec = layers.InputSpec(shape=[None, None, None, 3]),
               activation: Optional[str] = None,
               use_sync_bn: bool = False,
               norm_momentum: Optional[float] = None,
               norm_epsilon: Optional[float] = None,
               kernel_initializer: str = "VarianceScaling",
               kernel_regularizer: Optional[tf_keras.regularizers.Regularizer] = None,
               bias_regularizer: Optional[tf_keras.regularizers.Regularizer] = None,
               **kwargs):
    flat = sorted(set(kwargs) & set(model_config.FIELDS))
    if flat:
      raise TypeError(f"HaloNet: HaloNetConfig fields ({', '.join(flat)}) go in the config: "
                      f"HaloNet(HaloNetConfig(model_id=..., {flat[0]}=...))")
    config = _config_of(config)
    spec = model_overrides.resolve(config)
    norm_momentum = spec.norm_momentum if norm_momentum is None else norm_momentum
    norm_epsilon = spec.norm_epsilon if norm_epsilon is None else norm_epsilon
    self._config = config
    self._config_dict = dict(  # get_config adds the backbone config as a plain dict
        input_specs=input_specs, activation=activation,
        use_sync_bn=use_sync_bn, norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
        kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer,
        bias_regularizer=bias_regularizer)
    self._spec = spec
    self._activation = activation or spec.activation
    self._norm_kwargs = dict(axis=-1, momentum=norm_momentum, epsilon=norm_epsilon,
                             synchronized=use_sync_bn)
    self._conv_kwargs = dict(use_bias=False, kernel_initializer=kernel_initializer,
                             kernel_regularizer=kernel_regularizer,
                             bias_regularizer=bias_regularizer)
    self._kernel_initializer = kernel_initializer
    self._kernel_regularizer = kernel_regularizer
    self._bias_regularizer = bias_regularizer
    self._recompute = bool(config.recompute_attention)
    self._fused = config.fused_attention

    inputs = tf_keras.Input(shape=input_specs.shape[1:])
    endpoints = self._stages(self._stem(inputs), config.stochastic_depth_drop_rate)
    self._output_specs = {level: endpoint.get_shape() for level, endpoint in endpoints.items()}
    super().__init__(inputs=inputs, outputs=endpoints, **kwargs)

  def _stages(self, x, stochastic_depth_drop_rate: float) -> Dict[str, tf.Tensor]:
    """The four stages (and the d_f conv after the last) on the stem's output: endpoints."""
    spec, endpoints = self._spec, {}
    total_blocks, block_index = sum(spec.blocks), 0
    for stage, repeats in enumerate(spec.blocks):
      width = spec.width(stage)
      for i in range(repeats):
        rate = stochastic_depth_drop_rate * (block_index + 1) / total_blocks
        x = self._block(x, spec.block_type(stage, i), stage, width,
                        2 if (i == 0 and stage > 0) else 1, rate,
                        name=f"stage{stage + 1}_block{i + 1}")
        block_index += 1
      if stage == 3 and spec.final_width:
        x = self._conv_bn_act(x, spec.final_width, 1, 1, name="final")
      endpoints[str(stage + 2)] = x
    return endpoints

  # -- building blocks ------------------------------------------------------------------------

  def _act(self, name):
    return layers.Activation(tf_utils.get_activation(self._activation), name=name)

  def _conv(self, x, filters, kernel, strides, name, groups=1):
    """A bias-free k×k conv, 'SAME' padded, or PyTorch-padded with padding='symmetric'."""
    pad = padding.symmetric_padding(kernel, strides)
    if self._spec.padding == "symmetric" and strides > 1 and pad:
      x = Pad2D(pad, name=f"{name}_pad")(x)
      return layers.Conv2D(filters, kernel, strides, padding="valid", groups=groups, name=name,
                           **self._conv_kwargs)(x)
    return layers.Conv2D(filters, kernel, strides, padding="same", groups=groups, name=name,
                         **self._conv_kwargs)(x)

  def _conv_bn_act(self, x, filters, kernel, strides, name, act=True, zero_gamma=False):
    x = self._conv(x, filters, kernel, strides, name=f"{name}_conv")
    x = layers.BatchNormalization(name=f"{name}_bn", gamma_initializer="zeros" if zero_gamma
                                  else "ones", **self._norm_kwargs)(x)
    return self._act(f"{name}_act")(x) if act else x

  def _stem(self, x):
    spec = self._spec
    if spec.stem == "patch":  # 4×4 patches, linearly embedded
      return self._conv_bn_act(x, spec.stem_width, 4, 4, name="stem", act=False)
    if spec.stem == "sasa":  # SASA §3.2: attention inside each 4×4 pooling window, BN, max pool
      x = SpatiallyAwareAttention(key_dim=spec.stem_width, pool_size=4,
                                  kernel_initializer=self._kernel_initializer,
                                  kernel_regularizer=self._kernel_regularizer,
                                  recompute=self._recompute, name="stem_sasa")(x)
      x = layers.BatchNormalization(name="stem_bn", **self._norm_kwargs)(x)
      x = self._act("stem_act")(x)
      # Pad bottom / right with the dtype's minimum and pool 'valid', so every pooling window is
      # exactly one attention block ('same' pooling would centre its windows on odd sizes).
      x = tf.pad(x, [[0, 0], [0, 3], [0, 3], [0, 0]], constant_values=x.dtype.min)
      return layers.MaxPool2D(4, 4, padding="valid", name="stem_pool")(x)
    if spec.stem == "tiered":
      widths = (3 * spec.stem_width // 8, spec.stem_width // 2, spec.stem_width)
      strides = (2, 1, 1 if spec.stem_pool else 2)
      for i, (width, stride) in enumerate(zip(widths, strides)):
        x = self._conv_bn_act(x, width, 3, stride, name=f"stem{i + 1}")
    else:
      x = self._conv_bn_act(x, spec.stem_width, 7, 2, name="stem")
    if not spec.stem_pool:
      return x
    if spec.padding == "symmetric":
      x = Pad2D(1, float("-inf"), name="stem_pool_pad")(x)
      return layers.MaxPool2D(3, 2, padding="valid", name="stem_pool")(x)
    return layers.MaxPool2D(3, 2, padding="same", name="stem_pool")(x)

  def _spatial(self, x, stage_type, stage, width, strides, name):
    """The block's spatial op: [B, H, W, d] -> [B, ceil(H/s), ceil(W/s), out], returns (y, out)."""
    spec = self._spec
    if stage_type == "conv":
      groups = width // spec.group_width if spec.group_width else 1
      return self._conv(x, width, 3, strides, name=f"{name}_conv2", groups=groups), width
    heads = spec.heads(stage)
    projection = dict(kernel_initializer=self._kernel_initializer,
                      kernel_regularizer=self._kernel_regularizer, recompute=self._recompute)
    if stage_type == "sasa":
      return SASAAttention(key_dim=width, value_dim=width, kernel_size=spec.sasa_kernel,
                           num_heads=heads, strides=strides, fused_attention=self._fused,
                           name=f"{name}_sasa", **projection)(x), width
    value_dim = spec.value_dim(stage)
    return HaloAttention(num_heads=heads, key_dim=spec.key_dim(stage), value_dim=value_dim,
                         block_size=spec.block_size, halo_size=spec.halo_size, strides=strides,
                         query_positions=spec.query_positions, fused_attention=self._fused,
                         name=f"{name}_halo", **projection)(x), value_dim

  def _block(self, x, stage_type, stage, width, strides, drop_rate, name):
    out = self._spec.output_width(stage)
    shortcut = x
    if strides != 1 or x.shape[-1] != out:
      shortcut = self._conv_bn_act(x, out, 1, strides, name=f"{name}_shortcut", act=False)
    y = self._conv_bn_act(x, width, 1, 1, name=f"{name}_1")
    y, mid = self._spatial(y, stage_type, stage, width, strides, name)
    y = layers.BatchNormalization(name=f"{name}_2_bn", **self._norm_kwargs)(y)
    y = self._act(f"{name}_2_act")(y)
    se_ratio = self._spec.se(stage_type)
    if se_ratio > 0:
      divisor = self._spec.se_divisor
      y = nn_layers.SqueezeExcitation(in_filters=mid, out_filters=mid, se_ratio=se_ratio,
                                      divisible_by=divisor, round_down_protect=divisor == 1,
                                      kernel_initializer=self._kernel_initializer,
                                      kernel_regularizer=self._kernel_regularizer,
                                      bias_regularizer=self._bias_regularizer,
                                      activation=self._spec.se_activation or self._activation,
                                      name=f"{name}_se")(y)
    if self._spec.eca and stage_type == "conv":
      y = EfficientChannelAttention(kernel_initializer=self._kernel_initializer,
                                    name=f"{name}_eca")(y)
    y = self._conv_bn_act(y, out, 1, 1, name=f"{name}_3", act=False, zero_gamma=True)
    if drop_rate > 0:
      y = nn_layers.StochasticDepth(drop_rate, name=f"{name}_drop")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return self._act(f"{name}_out")(y)

  # -- Model Garden backbone interface ---------------------------------------------------------

  @property
  def config(self) -> HaloNetConfig:
    """A copy of the backbone config the model was built from."""
    return HaloNetConfig(self._config.as_dict())

  @property
  def spec(self) -> specs.ModelSpec:
    """The spec the model was built from, overrides applied (overrides.resolve)."""
    return self._spec

  @property
  def output_specs(self) -> Dict[str, tf.TensorShape]:
    """{level: TensorShape} of the endpoints '2'..'5'."""
    return self._output_specs

  def get_config(self) -> Dict[str, Any]:
    return dict(config=self._config.as_dict(), **self._config_dict)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    """Also reads the flat form saved before the config was nested (its fields at the top)."""
    config = dict(config)
    flat = {name: config.pop(name) for name in model_config.FIELDS if name in config}
    if flat:
      config["config"] = {**flat, **config.get("config", {})}
    return cls(**config)
