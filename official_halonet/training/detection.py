"""Detection and instance segmentation: the halo / SASA backbones inside Model Garden's Mask R-CNN
and RetinaNet.

`detection_experiment(**settings)` (gin-bound `DetectionSettings`; `build_detection_experiment`:
the same without gin) returns a Model Garden `ExperimentConfig` for `kind='maskrcnn'` or
`kind='retinanet'`, started from Model Garden's own COCO experiments ('maskrcnn_resnetfpn_coco', 'retinanet_resnetfpn_coco'):

  backbone   this project's `Backbone(type='halonet', halonet=HaloNetConfig(model_id=...))`, built
             by the 'halonet' builder registered with Model Garden's backbone factory. The FPN
             decoder reads endpoints '2'..'5' from `output_specs`: level l is ceil(S / 2^l) on a
             side at any input size S, because the attention layers pad each map to a multiple of
             b and crop back (the image is never padded for the backbone's sake). With b=32 at
             1024 px the halo stage's maps are 64×64 and 32×32; at 1152 px they are 72×72 and 36×36,
             padded to 96 / 64 inside the layers.
  recipe     the HaloNet paper's detection recipe: 67,500 steps, global batch 64, SGD momentum 0.9,
             lr 0.1 with 0.1× decays at 60k and 65k steps, 500 linear warm-up steps (from Model
             Garden's detection warm-up start 0.0067), 1024×1024 input, L2 weight decay 4e-5,
             multi-scale jitter 0.8–1.25 with horizontal flips, synchronised batch norm,
  data       COCO-format TFRecords (Model Garden's tf.Example detection format, as written by
             `official/vision/data/create_coco_tf_record.py`),
  init       `init_checkpoint` (a checkpoint file or a classification run's model_dir) with
             `init_checkpoint_modules='backbone'`: the task reads
             `tf.train.Checkpoint(backbone=model.backbone)` from it: the `backbone` item Model
             Garden's trainer writes into every classification checkpoint (ClassificationModel's
             checkpoint_items), so an ImageNet run of this project initialises the detector's
             backbone; decoder and heads start from scratch.

    import official_halonet.training.detection as detection
    config = detection.detection_experiment(kind='maskrcnn', backbone='resnet50_se_halo_b8',
                                            train_input_path='coco/train*', ...)
    task = official.core.task_factory.get_task(config.task, logging_dir=model_dir)
    official.core.train_lib.run_experiment(distribution_strategy=..., task=task,
                                           mode='train_and_eval', params=config, model_dir=...)

gin/detection/*.gin bind DetectionSettings' fields; every field is a plain value so --gin_bindings
can override any of them, and `params_override` (a dict, YAML string
or YAML file) overrides any field of the Model Garden config last (head widths, anchors, ...).

The same defaults are registered with Model Garden's experiment factory as 'maskrcnn_halonet_coco'
and 'retinanet_halonet_coco', so Model Garden's own train.py (`--experiment=... --config_file=...`)
can run them and a saved params.yaml with `backbone.type: halonet` reloads (a config whose backbone
is Model Garden's `Backbone` has no `halonet` field to override).
"""
import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import gin

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import hyperparams
from official_halonet.models import factory
from official_halonet.models import overrides as model_overrides
from official_halonet.training import experiment
from official_halonet.training import optimizer as optimizer_lib
from official_halonet.training import precision
from official_halonet.training import recipes
from official_halonet.training.config_error import ConfigError
from official_halonet.training.config_error import require

CONFIGURABLE = "detection_experiment"

# Model Garden's COCO experiments each kind starts from.
BASE_EXPERIMENTS = {
    "maskrcnn": "maskrcnn_resnetfpn_coco",
    "retinanet": "retinanet_resnetfpn_coco",
}

COCO_VAL_EXAMPLES = 5000

ParamsOverride = Optional[Union[Dict[str, Any], str]]


@dataclasses.dataclass
class DetectionSettings(experiment.BackboneOverrides):
  """Every setting of a Model Garden Mask R-CNN or RetinaNet run with a HaloNet / SASA backbone
  (gin: `detection_experiment.<field>`).

    recipe: a published detection recipe (training/recipes.py DETECTION_RECIPES) whose values
      replace the defaults below; every other binding overrides it.
    kind: 'maskrcnn' (Mask R-CNN with FPN, levels 2-6) or 'retinanet' (RetinaNet, levels 3-7).
    backbone: a model name from official_halonet.models.MODELS, e.g. 'resnet50_se_halo_b8'.
    the backbone overrides: every HaloNetConfig field but model_id (models/config.py:
      block_size, halo_size, se_ratio, final_width, blocks, base_width, stem_width, head_dim,
      num_heads, stochastic_depth_drop_rate, recompute_attention, fused_attention); None keeps the
      spec's value.
    num_classes: detector classes including background (COCO: 91).
    image_size: square input side the parser scales and pads images to.
    train_input_path, eval_input_path: COCO-format tf.Example TFRecord file patterns.
    annotation_file: COCO annotation JSON for evaluation. Mask R-CNN accepts None: Model Garden
      then writes one from the first `num_eval_examples` evaluation records into model_dir;
      RetinaNet requires the file (see validate).
    num_eval_examples: number of evaluation records (sets validation_steps when that is None).
    global_batch_size, eval_batch_size: batch sizes across all replicas.
    train_steps: total training steps.
    learning_rate: the initial (post-warm-up) learning rate.
    decay_boundaries: steps at which the learning rate is multiplied by `decay_factor`.
    decay_factor: the stepwise decay factor.
    warmup_steps, warmup_learning_rate: linear warm-up length and starting learning rate.
    momentum: SGD momentum.
    weight_decay: L2 weight decay (Model Garden's `losses.l2_weight_decay`, applied as
      l2(weight_decay / 2) kernel regularisers, i.e. weight_decay · sum(w²) / 2 in the loss).
    aug_scale_min, aug_scale_max: random scale jitter range of the parser.
    aug_rand_hflip: random horizontal flips.
    use_sync_bn: synchronise batch-norm statistics across replicas.
    init_checkpoint: checkpoint file or directory (the latest checkpoint in it is read), e.g. the
      model_dir of this project's ImageNet classification run of the same backbone.
    init_checkpoint_modules: 'backbone' (the pretrained-backbone case), 'all', or a list.
    mixed_precision: 'auto' (the runner's default for the strategy: bfloat16 on TPU, float16 on
      GPU, float32 on CPU) or one of those dtypes; input images follow it, and float16 uses
      dynamic loss scaling.
    validation_steps: evaluation steps; None evaluates num_eval_examples once (rounded up).
    validation_interval, steps_per_loop, summary_interval, checkpoint_interval: trainer intervals.
    params_override: dict, YAML string or YAML file applied last to the whole ExperimentConfig,
      e.g. the backbone's shape overrides {'task': {'model': {'backbone': {'halonet': {'blocks':
      [1, 1, 1, 1], 'base_width': 8}}}}} (checked by overrides.resolve).
  """
  recipe: str = ""
  kind: str = "maskrcnn"
  backbone: str = "resnet50_se_halo_b8"
  num_classes: int = 91
  image_size: int = 1024
  train_input_path: Union[str, Sequence[str]] = "coco/train*"
  eval_input_path: Union[str, Sequence[str]] = "coco/val*"
  annotation_file: Optional[str] = "coco/instances_val2017.json"
  num_eval_examples: int = COCO_VAL_EXAMPLES
  global_batch_size: int = 64
  eval_batch_size: int = 64  # divides every published slice's devices (tpu/slices.py)
  train_steps: int = 67500
  learning_rate: float = 0.1
  decay_boundaries: Sequence[int] = (60000, 65000)
  decay_factor: float = 0.1
  warmup_steps: int = 500
  warmup_learning_rate: float = 0.0067
  momentum: float = 0.9
  weight_decay: float = 4e-5
  aug_scale_min: float = 0.8
  aug_scale_max: float = 1.25
  aug_rand_hflip: bool = True
  use_sync_bn: bool = True
  init_checkpoint: Optional[str] = None
  init_checkpoint_modules: Union[str, Sequence[str]] = "backbone"
  mixed_precision: str = "auto"
  validation_steps: Optional[int] = None
  validation_interval: int = 2500
  steps_per_loop: int = 500
  summary_interval: int = 500
  checkpoint_interval: int = 500
  params_override: ParamsOverride = None

  def validate(self, mixed_precision_default: str) -> Tuple[str, Optional[str]]:
    """Every setting that cannot work is a ConfigError naming it; returns (dtype, loss_scale)."""
    _require(self.kind in BASE_EXPERIMENTS, "kind",
             f"kind must be one of {sorted(BASE_EXPERIMENTS)}, got {self.kind!r}.")
    try:
      model_overrides.resolve(experiment.backbone_config(self.backbone, self))
    except model_overrides.OverrideError as e:  # an unknown name lists the known ones
      raise ConfigError("backbone" if e.field == "model_id" else e.field, str(e),
                        CONFIGURABLE) from None
    _require(self.image_size > 0, "image_size",
             f"image_size must be positive, got {self.image_size}.")
    boundaries = [int(b) for b in self.decay_boundaries]
    increasing = all(a < b for a, b in zip(boundaries, boundaries[1:]))
    _require(bool(boundaries) and boundaries[0] > 0 and increasing, "decay_boundaries",
             f"decay_boundaries must be a non-empty, strictly increasing list of positive "
             f"steps, got {list(self.decay_boundaries)}.")
    # Model Garden 2.20's RetinaNet parser gives a shape-[1] `num_detections` per image, which its
    # ground-truth-from-records conversion (coco_utils) cannot turn into an int under NumPy 2.
    _require(self.kind != "retinanet" or bool(self.annotation_file), "annotation_file",
             "RetinaNet evaluation needs annotation_file (a COCO instances JSON); "
             "Model Garden's ground truth built from the records fails for RetinaNet.")
    try:
      return precision.resolve(self.mixed_precision, mixed_precision_default)
    except ValueError as e:
      raise ConfigError("mixed_precision", str(e), CONFIGURABLE) from None


# The gin-configurable settings: gin/detection/*.gin bind `detection_experiment.<field>`. The
# class itself is never built from gin: gin checks the bound names against its fields, and
# `detection_experiment` reads gin's record of the bindings, so that a recipe can supply the rest.
GinDetectionSettings = gin.external_configurable(DetectionSettings, CONFIGURABLE)


def detection_experiment(mixed_precision_default: str = "float32",
                         **settings) -> cfg.ExperimentConfig:
  """The experiment of the gin-bound settings, `settings` (DetectionSettings' fields) overriding
  them; mixed_precision_default is the dtype mixed_precision='auto' stands for."""
  values = experiment.bound_values(GinDetectionSettings, CONFIGURABLE, settings)
  return build(from_recipe(**values), mixed_precision_default)


def build_detection_experiment(mixed_precision_default: str = "float32",
                               **settings) -> cfg.ExperimentConfig:
  """The same without gin: DetectionSettings' defaults, `settings` overriding them."""
  return build(from_recipe(**settings), mixed_precision_default)


def from_recipe(recipe: str = "", **overrides) -> DetectionSettings:
  """Settings of the named detection recipe, `overrides` replacing its values."""
  _require(not recipe or recipe in recipes.DETECTION_RECIPES, "recipe",
           f"unknown recipe {recipe!r}; known detection recipes: "
           f"{', '.join(sorted(recipes.DETECTION_RECIPES))}")
  return DetectionSettings(recipe=recipe,
                           **{**recipes.DETECTION_RECIPES.get(recipe, {}), **overrides})


def build(s: DetectionSettings, mixed_precision_default: str = "float32") -> cfg.ExperimentConfig:
  """A validated ExperimentConfig whose task is Model Garden's MaskRCNNTask or RetinaNetTask."""
  dtype, loss_scale = s.validate(mixed_precision_default)
  config = exp_factory.get_exp_config(BASE_EXPERIMENTS[s.kind])
  _set_model(config.task, s)
  _set_data(config.task, s, dtype)
  config.runtime.mixed_precision_dtype = dtype
  config.runtime.loss_scale = loss_scale
  _set_trainer(config.trainer, s)
  if s.params_override:
    config = hyperparams.override_params_dict(config, s.params_override, is_strict=True)
  config.validate()
  if s.params_override and config.task.model.backbone.type == "halonet":  # overridden there
    try:
      model_overrides.resolve(config.task.model.backbone.halonet)
    except ValueError as e:
      raise ConfigError("params_override", str(e), CONFIGURABLE) from None
  return config


def _set_model(task, s: DetectionSettings) -> None:
  model = task.model
  model.backbone = factory.halonet_backbone(experiment.backbone_config(s.backbone, s))
  model.num_classes = s.num_classes
  model.input_size = [s.image_size, s.image_size, 3]
  model.norm_activation = factory.norm_activation(model.backbone.halonet,
                                                  use_sync_bn=s.use_sync_bn)
  task.losses.l2_weight_decay = s.weight_decay
  task.init_checkpoint = s.init_checkpoint
  modules = s.init_checkpoint_modules
  task.init_checkpoint_modules = list(modules) if isinstance(modules, (list, tuple)) else modules
  task.annotation_file = s.annotation_file


def _set_data(task, s: DetectionSettings, dtype: str) -> None:
  task.train_data.input_path = s.train_input_path
  task.train_data.global_batch_size = s.global_batch_size
  task.train_data.dtype = dtype
  task.train_data.parser.aug_rand_hflip = s.aug_rand_hflip
  task.train_data.parser.aug_scale_min = s.aug_scale_min
  task.train_data.parser.aug_scale_max = s.aug_scale_max
  task.validation_data.input_path = s.eval_input_path
  task.validation_data.global_batch_size = s.eval_batch_size
  task.validation_data.dtype = dtype
  if s.kind == "maskrcnn":
    task.validation_data.num_examples = s.num_eval_examples


def _set_trainer(trainer, s: DetectionSettings) -> None:
  boundaries = [int(b) for b in s.decay_boundaries]
  trainer.train_steps = s.train_steps
  trainer.validation_steps = (-(-s.num_eval_examples // s.eval_batch_size)
                              if s.validation_steps is None else s.validation_steps)
  trainer.validation_interval = s.validation_interval
  trainer.steps_per_loop = s.steps_per_loop
  trainer.summary_interval = s.summary_interval
  trainer.checkpoint_interval = s.checkpoint_interval
  trainer.optimizer_config = optimizer_lib.sgd_with_warmup(
      learning_rate={"type": "stepwise", "stepwise": {
          "boundaries": boundaries,
          "values": [s.learning_rate * s.decay_factor**i for i in range(len(boundaries) + 1)]}},
      warmup_steps=s.warmup_steps, warmup_learning_rate=s.warmup_learning_rate,
      momentum=s.momentum)


def _require(condition: bool, parameter: str, message: str) -> None:
  require(condition, parameter, message, CONFIGURABLE)


def _registered(**settings) -> cfg.ExperimentConfig:
  """A recipe as Model Garden's experiment factory gives it: bfloat16 for 'auto' (TPU)."""
  return build(from_recipe(**settings), "bfloat16")


for _name in recipes.DETECTION_RECIPES:
  exp_factory.register_config_factory(_name)(functools.partial(_registered, recipe=_name))
# The first names, kept: COCO Mask R-CNN / RetinaNet, ResNet-50 + SE with halo attention (b=8, h=3).
exp_factory.register_config_factory("maskrcnn_halonet_coco")(
    functools.partial(_registered, kind="maskrcnn"))
exp_factory.register_config_factory("retinanet_halonet_coco")(
    functools.partial(_registered, kind="retinanet"))
