"""Builders: Model Garden's backbone factory entry ('halonet') and a one-line public API.

Model Garden (classification, RetinaNet, Mask R-CNN) builds backbones by name from a `Backbone`
one-of config; `Backbone` below extends Model Garden's with a `halonet` member, so a task config
that uses it accepts `backbone.type = 'halonet'`:

    from official_halonet.models import factory
    backbone = factory.Backbone(type='halonet', halonet=factory.HaloNetConfig(model_id='h3'))

Outside Model Garden's tasks:

    model = official_halonet.models.build('h3', num_classes=1000)   # [B, 320, 320, 3] -> logits
"""
import dataclasses
from typing import Optional

import tf_keras

from official.modeling import hyperparams
from official.vision.configs import backbones as mg_backbones
from official.vision.configs import common
from official.vision.modeling import classification_model
from official.vision.modeling.backbones import factory as mg_factory
from official_halonet.models import overrides as model_overrides
from official_halonet.models.config import HaloNetConfig
from official_halonet.models.halonet import HaloNet


@dataclasses.dataclass
class Backbone(mg_backbones.Backbone):
  """Model Garden's backbone one-of config plus `halonet`."""
  halonet: HaloNetConfig = dataclasses.field(default_factory=HaloNetConfig)


def model_garden_activation(name: str) -> str:
  """The activation name Model Garden's norm-activation config uses (it spells SiLU 'swish')."""
  return "swish" if name == "silu" else name


def halonet_backbone(config: HaloNetConfig) -> Backbone:
  """Model Garden's backbone one-of config for `config`: `Backbone(type='halonet')`."""
  return Backbone(type="halonet", halonet=config)


def norm_activation(config: HaloNetConfig, activation: Optional[str] = None,
                    use_sync_bn: bool = True) -> common.NormActivation:
  """Model Garden's norm-activation config of the backbone `config`: its spec's BatchNorm
  momentum and epsilon (their one declaration, specs.ModelSpec) and activation (or `activation`),
  so a task builds the BatchNorm layers `build` builds."""
  spec = model_overrides.resolve(config)
  return common.NormActivation(
      activation=model_garden_activation(activation or spec.activation), use_sync_bn=use_sync_bn,
      norm_momentum=spec.norm_momentum, norm_epsilon=spec.norm_epsilon)


@mg_factory.register_backbone_builder("halonet")
def build_halonet(input_specs: tf_keras.layers.InputSpec,
                  backbone_config: hyperparams.Config,
                  norm_activation_config: hyperparams.Config,
                  l2_regularizer: Optional[tf_keras.regularizers.Regularizer] = None) -> HaloNet:
  """Model Garden backbone builder for `backbone.type == 'halonet'`."""
  if backbone_config.type != "halonet":
    raise ValueError(f"build_halonet got a backbone config of type {backbone_config.type!r}.")
  return HaloNet(
      config=backbone_config.get(),
      input_specs=input_specs,
      activation=norm_activation_config.activation,
      use_sync_bn=norm_activation_config.use_sync_bn,
      norm_momentum=norm_activation_config.norm_momentum,
      norm_epsilon=norm_activation_config.norm_epsilon,
      kernel_regularizer=l2_regularizer)


def build(model_id: str,
          num_classes: int = 1000,
          image_size: Optional[int] = None,
          dropout_rate: float = 0.0,
          weight_decay: float = 0.0,
          **overrides) -> tf_keras.Model:
  """A classifier: the named backbone, global average pooling, dropout and a dense layer.

  Args:
    model_id: a name from `official_halonet.models.MODELS`.
    num_classes: classifier width.
    image_size: input side; defaults to the model's published resolution. None-sized inputs are
      accepted too: pass 0 for [B, None, None, 3].
    dropout_rate: dropout before the classifier.
    weight_decay: L2 factor on every kernel (Model Garden adds it as a regularization loss).
    **overrides: HaloNetConfig fields (block_size=12, blocks=(1, 1, 1, 1), ...).

  Returns:
    Model Garden's ClassificationModel: [B, S, S, 3] float images -> [B, num_classes] logits.
  """
  config = HaloNetConfig(model_id=model_id, **overrides)
  spec = model_overrides.resolve(config)
  size = spec.image_size if image_size is None else (image_size or None)
  input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
  regularizer = tf_keras.regularizers.L2(weight_decay / 2) if weight_decay else None
  backbone = HaloNet(config, input_specs=input_specs, kernel_regularizer=regularizer)
  return classification_model.ClassificationModel(
      backbone=backbone, num_classes=num_classes, input_specs=input_specs,
      dropout_rate=dropout_rate, kernel_regularizer=regularizer)
