"""The classification experiment: its settings -> Model Garden ExperimentConfig.

Every gin file in gin/ that is not a detection file binds fields of `Settings` under the name
`experiment` (and nothing else), e.g.

    experiment.model_id = 'h0'
    experiment.image_size = 256
    experiment.randaug_magnitude = 6

`experiment(**settings)` builds Model Garden's `ExperimentConfig` (task, trainer, runtime) from
the gin-bound settings (explicit keyword arguments win); `build(Settings(...))` does the same
without gin. main.py hands the config to `official.core.train_lib.run_experiment`; nothing else
reads gin. `build` works in steps: `Settings.validate`, the `schedule` in steps, the training data
config (and from it `evaluation_data`), then the task, trainer (optimizer.sgd_with_warmup) and
runtime (precision.resolve) configs.
On Model Garden's command line (official_halonet/train.py) `follow_overrides` derives again
what a recipe derives from the overridden batch, steps, image size or classes (DERIVING), so a
Model Garden override means what the same gin setting means.

The recipe (HaloNet paper, section 4): SGD with Nesterov momentum 0.9, learning rate
base_learning_rate · global_batch_size / 256 with linear warm-up, then cosine decay to
lr · final_learning_rate_fraction (1/128, not 0); L2 weight decay (Model Garden's
`l2_weight_decay`, applied to every kernel as a regularization loss), label smoothing,
RandAugment at the model's magnitude, stochastic depth, dropout before the classifier, SiLU, and
optionally EMA of the weights. Logits and the loss are float32 under mixed precision.
"""
import dataclasses
import functools
import math
from typing import Optional, Sequence

import gin

from official.core import config_definitions as cfg
from official.core import exp_factory
from official_halonet import data
from official_halonet.models import config as model_config
from official_halonet.models import factory as model_factory
from official_halonet.models import overrides as model_overrides
from official_halonet.models import specs
from official_halonet.models.config import HaloNetConfig
from official_halonet.training import gin_config
from official_halonet.training import optimizer as optimizer_lib
from official_halonet.training import precision
from official_halonet.training import recipes
from official_halonet.training import task as task_lib
from official_halonet.training.config_error import ConfigError
from official_halonet.training.config_error import require as _require

IMAGENET_TRAIN_EXAMPLES = 1281167
IMAGENET_EVAL_EXAMPLES = 50000


# The backbone overrides are HaloNetConfig's fields (models/config.py), declared there once; the
# settings classes (Settings, detection's DetectionSettings) take them over as their own fields
# (gin: `experiment.block_size = 12`), and backbone_config turns them back into one HaloNetConfig.
BackboneOverrides = dataclasses.make_dataclass(
    "BackboneOverrides", [(field.name, field.type, dataclasses.field(default=field.default))
                          for field in dataclasses.fields(HaloNetConfig)
                          if field.name in model_config.OVERRIDES])


def backbone_config(model_id: str, settings: BackboneOverrides) -> HaloNetConfig:
  """The backbone config of a run: the named model with the settings' backbone overrides."""
  return HaloNetConfig(model_id=model_id, **{name: getattr(settings, name)
                                             for name in model_config.OVERRIDES})


@dataclasses.dataclass
class Settings(BackboneOverrides):
  """Every setting of one HaloNet / SASA classification run (gin: `experiment.<field>`).

  recipe: a published recipe (training/recipes.py) whose values replace the defaults below;
    every other binding overrides the recipe's value. '' : the defaults alone.
  Model:
    model_id: a name from official_halonet.models.MODELS.
    the backbone overrides: every HaloNetConfig field but model_id (models/config.py: block_size,
      halo_size, se_ratio, final_width, the shape fields, stochastic_depth_drop_rate,
      recompute_attention, fused_attention); None keeps the model's value.
    num_classes, image_size (None: the model's published size), activation (None: the model's,
      SiLU for H0-H7), dropout_rate (before the classifier).
  Data:
    train_input_path / eval_input_path: TFRecord file patterns (comma-separated allowed), or
      tfds_name (+ tfds_data_dir, train_split, eval_split) for a TFDS-built dataset.
    label_offset: the stored label of class 0: 1 for the standard ImageNet converter, 0 for TFDS.
    multilabel: ImageNet-21k multi-label records with a sigmoid loss.
    train_examples / eval_examples: dataset sizes; they turn epochs into steps and fix the number
      of eval batches (identical on every host, padded with masked examples).
    randaug_magnitude (None: the model's), crop_area_range and random_crop (Inception crop),
      random_flip, mixup_alpha, cutmix_alpha, shuffle_buffer_size, cache_eval.
    shard_input: each host reads its own share of the files (False: every host reads all of
      them, identically; for debugging and equivalence tests).
  Schedule and optimizer:
    global_batch_size, eval_batch_size (None: global_batch_size), epochs or train_steps,
      base_learning_rate (per 256 examples), warmup_epochs, final_learning_rate_fraction,
      momentum, nesterov, weight_decay, label_smoothing, ema_decay (0: no EMA).
  Initialisation (fine-tuning):
    init_checkpoint / init_checkpoint_modules ('all' or 'backbone'): start from a checkpoint;
      init_block_size / init_halo_size: the b and h it was trained with (None: the model's), which
      fix the relative-position rows it trained (official_halonet.checkpoints.restore).
  Runtime and bookkeeping:
    mixed_precision: 'auto' (bfloat16 on TPU, float16 on GPU, float32 on CPU), or a dtype.
    steps_per_loop, checkpoint_interval, summary_interval, validation_interval: in steps
      (None: one epoch, at most 1000 for logging), max_checkpoints, loss_upper_bound (a larger or
      NaN loss stops the run), seed (file shuffling on every host and the initial weights).
    deterministic: the same command gives the same weights: TensorFlow's op determinism
      (tf.config.experimental.enable_op_determinism; tf.data maps with random ops then run
      in order, slower) and a seeded, ordered input. Needs a seed.
  """
  recipe: str = ""
  # Model.
  model_id: str = ""
  num_classes: int = 1000
  image_size: Optional[int] = None
  activation: Optional[str] = None
  dropout_rate: float = 0.0
  # Data.
  train_input_path: str = ""
  eval_input_path: str = ""
  tfds_name: str = ""
  tfds_data_dir: str = ""
  train_split: str = "train"
  eval_split: str = "validation"
  label_offset: int = 1
  multilabel: bool = False
  train_examples: int = IMAGENET_TRAIN_EXAMPLES
  eval_examples: int = IMAGENET_EVAL_EXAMPLES
  randaug_magnitude: Optional[int] = None
  crop_area_range: Sequence[float] = (0.08, 1.0)
  random_crop: bool = True
  random_flip: bool = True
  shard_input: bool = True
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  shuffle_buffer_size: int = 10000
  cache_eval: bool = False
  # Schedule and optimizer.
  global_batch_size: int = 4096
  eval_batch_size: Optional[int] = None
  epochs: float = 350
  train_steps: Optional[int] = None
  base_learning_rate: float = 0.1
  warmup_epochs: float = 10
  final_learning_rate_fraction: float = 1 / 128
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 2e-5
  label_smoothing: float = 0.1
  ema_decay: float = 0.0
  # Initialisation (fine-tuning).
  init_checkpoint: str = ""
  init_checkpoint_modules: str = "all"
  init_block_size: Optional[int] = None
  init_halo_size: Optional[int] = None
  # Runtime and bookkeeping.
  mixed_precision: str = "auto"
  steps_per_loop: Optional[int] = None
  checkpoint_interval: Optional[int] = None
  summary_interval: Optional[int] = None
  validation_interval: Optional[int] = None
  max_checkpoints: int = 5
  loss_upper_bound: float = 1e6
  seed: Optional[int] = 1
  deterministic: bool = False

  def validate(self) -> specs.ModelSpec:
    """Every setting that cannot work is a ConfigError naming it; returns the model's spec."""
    _require(bool(self.model_id), "model_id",
             "no model: bind experiment.model_id, or experiment.recipe (training/recipes.py)")
    spec = specs.get_spec(self.model_id) if self.model_id in specs.MODELS else None
    _require(spec is not None, "model_id", f"unknown model {self.model_id!r}; known models: "
             f"{', '.join(sorted(specs.MODELS))}")
    image_size = spec.image_size if self.image_size is None else self.image_size
    _require(isinstance(image_size, int) and image_size >= 32, "image_size",
             f"image_size must be an integer >= 32 (the backbone's output stride), got "
             f"{image_size!r}")
    _require(self.num_classes > 0, "num_classes", f"num_classes must be > 0, got "
             f"{self.num_classes}")
    try:
      spec = model_overrides.resolve(backbone_config(self.model_id, self))
    except model_overrides.OverrideError as e:
      raise ConfigError(e.field, str(e)) from None
    for name, minimum in (("init_block_size", 1), ("init_halo_size", 0)):
      value = getattr(self, name)
      _require(value is None or (isinstance(value, int) and value >= minimum), name,
               f"{name} must be None or an integer >= {minimum}, got {value!r}")
    _require(self.global_batch_size > 0, "global_batch_size",
             f"global_batch_size must be > 0, got {self.global_batch_size}")
    self._validate_data()
    _require(self.mixed_precision in precision.SETTINGS, "mixed_precision",
             f"mixed_precision must be one of {precision.SETTINGS}, got {self.mixed_precision!r}")
    _require(self.init_checkpoint_modules in ("all", "backbone"), "init_checkpoint_modules",
             f"init_checkpoint_modules must be 'all' or 'backbone', got "
             f"{self.init_checkpoint_modules!r}")
    _require(self.seed is not None or not self.deterministic, "deterministic",
             "deterministic = True needs a seed (experiment.seed), got None")
    return spec

  def _validate_data(self) -> None:
    _require(bool(self.train_input_path) != bool(self.tfds_name), "train_input_path",
             "set exactly one of train_input_path (TFRecord patterns) and tfds_name")
    _require(bool(self.eval_input_path) or bool(self.tfds_name), "eval_input_path",
             "set eval_input_path (TFRecord patterns) for evaluation")
    _require(self.label_offset >= 0, "label_offset",
             f"label_offset must be >= 0, got {self.label_offset}")
    _require(self.train_examples > 0 and self.eval_examples > 0, "train_examples",
             "train_examples and eval_examples must be > 0")

  @property
  def mixing(self) -> bool:
    """Mixup or CutMix: soft labels, label smoothing moves into the mixing."""
    return bool(self.mixup_alpha or self.cutmix_alpha)


# The gin-configurable settings: gin/*.gin bind `experiment.<field>`. A subclass, so that
# `Settings(...)` itself never reads gin.
# The class itself is never built from gin: gin checks the bound names against its fields, and
# `experiment` reads gin's record of the bindings, so that a recipe can supply the rest.
CONFIGURABLE = "experiment"
GinSettings = gin.external_configurable(Settings, CONFIGURABLE)


def experiment(mixed_precision_default: str = "float32", **settings) -> cfg.ExperimentConfig:
  """The experiment of the gin-bound settings, `settings` (Settings' fields) overriding them.

  A bound `recipe` supplies the values nothing binds. mixed_precision_default: the dtype
  mixed_precision='auto' stands for (the runner sets it from the strategy).
  """
  gin_config.refuse_renamed(CONFIGURABLE, settings)
  return build(from_recipe(**bound_values(GinSettings, CONFIGURABLE, settings)),
               mixed_precision_default)


def bound_values(gin_class, configurable: str, explicit: dict) -> dict:
  """The fields gin binds for `configurable` (macros and references resolved by gin) and the
  `explicit` ones, without the defaults of the fields nothing binds."""
  built = gin_class(**explicit)
  return {name: getattr(built, name) for name in {*gin.get_bindings(configurable), *explicit}}


def from_recipe(recipe: str = "", **overrides) -> Settings:
  """Settings of the named recipe (training/recipes.py), `overrides` replacing its values."""
  gin_config.refuse_renamed(CONFIGURABLE, overrides)
  _require(not recipe or recipe in recipes.RECIPES, "recipe",
           f"unknown recipe {recipe!r}; known recipes: {', '.join(sorted(recipes.RECIPES))}")
  return Settings(recipe=recipe, **{**recipes.RECIPES.get(recipe, {}), **overrides})


def _registered(name: str, **overrides) -> cfg.ExperimentConfig:
  """A recipe (with `overrides` of its settings) as Model Garden's experiment factory gives it:
  bfloat16 for 'auto' (TPU)."""
  return build(from_recipe(name, **overrides), "bfloat16")


for _name in recipes.RECIPES:
  exp_factory.register_config_factory(_name)(functools.partial(_registered, _name))


# The Model Garden fields of a registered recipe that are settings the recipe derives others from
# (the learning rate, warm-up, decay and loop lengths from the batch and steps; the pipelines'
# image size and classes from the model's): field -> its Settings field. `follow_overrides`
# re-derives from them on Model Garden's command line as `build` does from gin.
DERIVING = {
    "task.train_data.global_batch_size": "global_batch_size",
    "task.validation_data.global_batch_size": "eval_batch_size",
    "trainer.train_steps": "train_steps",
    "task.model.input_size": "image_size",
    "task.model.num_classes": "num_classes",
}
# Fields that restate the model's declaration (first) for the data pipelines: they must agree.
RESTATED = (("task.model.input_size", "task.train_data.image_size",
             "task.validation_data.image_size"),
            ("task.model.num_classes", "task.train_data.num_classes",
             "task.validation_data.num_classes"))


def _flat(tree: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    flat.update(_flat(value, path + ".") if isinstance(value, dict) else {path: value})
  return flat


def _nested(flat: dict) -> dict:
  """{'a.b': 1} -> {'a': {'b': 1}}."""
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split(".")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def _as_setting(path: str, value):
  """A DERIVING field's value as its Settings value (input_size [S, S, 3] -> S)."""
  if path != "task.model.input_size":
    return value
  _require(len(value) == 3 and value[0] == value[1] and value[2] == 3, "image_size",
           f"{path} must be [S, S, 3] (square RGB images), got {value}")
  return value[0]


def follow_overrides(recipe: str, registered: cfg.ExperimentConfig,
                     overridden: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """`overridden` (Model Garden's overrides of the registered `recipe`) with every value the recipe
  derives from a changed DERIVING field derived again, as gin's `experiment.<setting>` would.

  A field the overrides set keeps their value; every other field takes its value in the recipe
  built with the changed settings (a batch of 1024 gives lr 0.4 and its warm-up, decay and steps;
  input_size [32, 32, 3] gives 32 px pipelines). ConfigError (naming the field) on a setting
  that cannot work or a restated field that disagrees (check_restated).
  """
  base, given = _flat(registered.as_dict()), _flat(overridden.as_dict())
  changed = {path for path, value in given.items() if value != base.get(path)}
  settings = {name: _as_setting(path, given[path]) for path, name in DERIVING.items()
              if path in changed}
  if settings:
    try:
      rebuilt = _flat(_registered(recipe, **settings).as_dict())
    except ConfigError as e:
      fields = [path for path, name in DERIVING.items() if name == e.parameter] or [e.parameter]
      raise ConfigError(e.parameter, f"{fields[0]}: {e}") from None
    overridden.override(_nested({path: value for path, value in rebuilt.items()
                                 if path not in changed and value != given.get(path)}),
                        is_strict=True)
  check_restated(overridden)
  return overridden


def check_restated(config: cfg.ExperimentConfig) -> None:
  """ConfigError naming the first field that restates the model's image size or classes
  (RESTATED) with another value."""
  flat = _flat(config.as_dict())
  for declared, *restated in RESTATED:
    for path in restated:
      if path in flat and flat[path] != _as_setting(declared, flat[declared]):
        raise ConfigError(DERIVING[declared], f"{path} = {flat[path]} disagrees with {declared} = "
                          f"{flat[declared]}, which declares it (the pipelines follow it): set "
                          f"{declared} only")


def build(settings: Settings, mixed_precision_default: str = "float32") -> cfg.ExperimentConfig:
  """Model Garden's ExperimentConfig for `settings` (ConfigError on a setting that cannot work)."""
  spec = settings.validate()
  image_size = spec.image_size if settings.image_size is None else settings.image_size
  eval_batch_size = settings.eval_batch_size or settings.global_batch_size
  steps = schedule(train_examples=settings.train_examples, eval_examples=settings.eval_examples,
                   global_batch_size=settings.global_batch_size, eval_batch_size=eval_batch_size,
                   epochs=settings.epochs, train_steps=settings.train_steps,
                   warmup_epochs=settings.warmup_epochs, steps_per_loop=settings.steps_per_loop)
  train_data = training_data(settings, spec, image_size)
  eval_data = evaluation_data(train_data, eval_input_path=settings.eval_input_path,
                              eval_split=settings.eval_split, eval_batch_size=eval_batch_size,
                              eval_batches=steps.eval_batches, cache_eval=settings.cache_eval)
  dtype, loss_scale = precision.resolve(settings.mixed_precision, mixed_precision_default)
  return cfg.ExperimentConfig(
      task=task(settings, image_size, train_data, eval_data),
      trainer=trainer(settings, steps),
      runtime=cfg.RuntimeConfig(mixed_precision_dtype=dtype, loss_scale=loss_scale))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A run's length in steps (every count is in optimizer steps of one global batch)."""
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  eval_batches: int  # batches of one evaluation pass, padded to the same count on every host
  steps_per_loop: int


def schedule(*, train_examples, eval_examples, global_batch_size, eval_batch_size, epochs,
             train_steps, warmup_epochs, steps_per_loop) -> Schedule:
  """Epochs -> steps; warm-up shorter than the run; one loop at most an epoch / 1000."""
  steps_per_epoch = max(1, train_examples // global_batch_size)
  total_steps = train_steps or int(round(epochs * steps_per_epoch))
  _require(total_steps > 0, "epochs", f"the run has no steps (epochs={epochs}, "
           f"train_steps={train_steps})")
  return Schedule(
      steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      warmup_steps=min(int(round(warmup_epochs * steps_per_epoch)), total_steps - 1),
      eval_batches=math.ceil(eval_examples / eval_batch_size),
      steps_per_loop=steps_per_loop or min(steps_per_epoch, 1000, total_steps))


def training_data(s: Settings, spec: specs.ModelSpec, image_size: int) -> data.DataConfig:
  """The training DataConfig; models imported from timm evaluate with timm's crop fraction and
  interpolation (specs.py), which the evaluation config inherits from it."""
  timm_preprocessing = {k: v for k, v in (("center_crop_fraction", spec.eval_crop_fraction),
                                          ("tf_resize_method", spec.eval_interpolation)) if v}
  return data.DataConfig(
      **timm_preprocessing, input_path=s.train_input_path, tfds_name=s.tfds_name,
      tfds_data_dir=s.tfds_data_dir, tfds_split=s.train_split if s.tfds_name else "",
      is_training=True, global_batch_size=s.global_batch_size, image_size=image_size,
      num_classes=s.num_classes, label_offset=s.label_offset, is_multilabel=s.multilabel,
      randaug_magnitude=(spec.randaug_magnitude if s.randaug_magnitude is None
                         else s.randaug_magnitude),
      mixup_alpha=s.mixup_alpha, cutmix_alpha=s.cutmix_alpha,
      mixup_label_smoothing=s.label_smoothing if s.mixing else 0.0,
      crop_area_range=tuple(s.crop_area_range), aug_crop=s.random_crop,
      aug_rand_hflip=s.random_flip, sharding=s.shard_input,
      shuffle_buffer_size=s.shuffle_buffer_size, cache=False, eval_num_batches=None,
      seed=s.seed, deterministic=True if s.deterministic else None)


def evaluation_data(train: data.DataConfig, *, eval_input_path, eval_split, eval_batch_size,
                    eval_batches, cache_eval) -> data.DataConfig:
  """The evaluation DataConfig: the training one without augmentation, on eval files."""
  return dataclasses.replace(
      train, input_path=eval_input_path, tfds_split=eval_split if train.tfds_name else "",
      is_training=False, global_batch_size=eval_batch_size, randaug_magnitude=0,
      mixup_alpha=0.0, cutmix_alpha=0.0, cache=cache_eval, eval_num_batches=eval_batches)


def task(s: Settings, image_size: int, train_data: data.DataConfig,
         eval_data: data.DataConfig) -> task_lib.TaskConfig:
  """The classification task: the halonet backbone, its norm-activation (BatchNorm from the
  model's spec, as models.build), losses, init."""
  return task_lib.TaskConfig(
      model=task_lib.ModelConfig(
          num_classes=s.num_classes,
          input_size=[image_size, image_size, 3],
          backbone=model_factory.halonet_backbone(backbone_config(s.model_id, s)),
          dropout_rate=s.dropout_rate,
          norm_activation=model_factory.norm_activation(backbone_config(s.model_id, s),
                                                        s.activation)),
      train_data=train_data,
      validation_data=eval_data,
      losses=task_lib.mg_config.Losses(
          label_smoothing=0.0 if s.mixing else s.label_smoothing,
          l2_weight_decay=s.weight_decay, one_hot=not s.mixing, soft_labels=s.mixing),
      init_checkpoint=s.init_checkpoint,
      init_checkpoint_modules=s.init_checkpoint_modules,
      init_block_size=s.init_block_size, init_halo_size=s.init_halo_size)


def trainer(s: Settings, steps: Schedule) -> cfg.TrainerConfig:
  """The trainer: warm-up + cosine Nesterov SGD, intervals, best-checkpoint export."""
  optimizer = optimizer_lib.sgd_with_warmup(
      learning_rate={"type": "cosine", "cosine": {
          "initial_learning_rate": s.base_learning_rate * s.global_batch_size / 256,
          "decay_steps": max(1, steps.total_steps - steps.warmup_steps),
          "alpha": s.final_learning_rate_fraction,
          "offset": steps.warmup_steps}},
      warmup_steps=steps.warmup_steps, momentum=s.momentum, nesterov=s.nesterov,
      ema_decay=s.ema_decay)
  interval = s.checkpoint_interval or steps.steps_per_epoch
  return cfg.TrainerConfig(
      train_steps=steps.total_steps,
      validation_steps=steps.eval_batches,
      validation_interval=s.validation_interval or interval,
      steps_per_loop=steps.steps_per_loop,
      summary_interval=s.summary_interval or steps.steps_per_loop,
      checkpoint_interval=interval,
      max_to_keep=s.max_checkpoints,
      loss_upper_bound=s.loss_upper_bound,
      recovery_max_trials=0,  # a NaN / too-large loss stops the run; the last checkpoint stays
      best_checkpoint_eval_metric="accuracy" if not s.multilabel else "",
      best_checkpoint_export_subdir="best_ckpt" if not s.multilabel else "",
      optimizer_config=optimizer)
