"""The one gin-configurable experiment builder: gin bindings -> Model Garden ExperimentConfig.

Every gin file in gin/ binds parameters of `experiment` (and nothing else), e.g.

    experiment.model_id = 'h0'
    experiment.image_size = 256
    experiment.randaug_magnitude = 6

`experiment()` returns Model Garden's `ExperimentConfig` (task, trainer, runtime), which
main.py hands to `official.core.train_lib.run_experiment`; nothing else reads gin. It works in
steps: `validate` the settings, the `schedule` in steps, the training data config (and from it
`evaluation_data`), then the task, trainer (optimizer.sgd_with_warmup) and runtime
(precision.resolve) configs.

The recipe (HaloNet paper, section 4): SGD with Nesterov momentum 0.9, learning rate
base_learning_rate · global_batch_size / 256 with linear warm-up, then cosine decay to
lr · final_learning_rate_fraction (1/128, not 0); L2 weight decay (Model Garden's
`l2_weight_decay`, applied to every kernel as a regularization loss), label smoothing,
RandAugment at the model's magnitude, stochastic depth, dropout before the classifier, SiLU, and
optionally EMA of the weights. Logits and the loss are float32 under mixed precision.
"""
import dataclasses
import math
from typing import Optional, Sequence

import gin

from official.core import config_definitions as cfg
from official.vision.configs import common
from official_halonet import data
from official_halonet.models import factory as model_factory
from official_halonet.models import specs
from official_halonet.training import optimizer as optimizer_lib
from official_halonet.training import precision
from official_halonet.training import task as task_lib
from official_halonet.training.config_error import require as _require

IMAGENET_TRAIN_EXAMPLES = 1281167
IMAGENET_EVAL_EXAMPLES = 50000


@gin.configurable(denylist=["mixed_precision_default"])
def experiment(
    # Model.
    model_id: str = gin.REQUIRED,
    num_classes: int = 1000,
    image_size: Optional[int] = None,
    block_size: Optional[int] = None,
    halo_size: Optional[int] = None,
    final_width: Optional[int] = None,
    se_ratio: Optional[float] = None,
    activation: Optional[str] = None,
    stochastic_depth_rate: float = 0.0,
    dropout_rate: float = 0.0,
    recompute_attention: bool = False,
    # Data.
    train_input_path: str = "",
    eval_input_path: str = "",
    tfds_name: str = "",
    tfds_data_dir: str = "",
    train_split: str = "train",
    eval_split: str = "validation",
    label_offset: int = 1,
    multilabel: bool = False,
    train_examples: int = IMAGENET_TRAIN_EXAMPLES,
    eval_examples: int = IMAGENET_EVAL_EXAMPLES,
    randaug_magnitude: Optional[int] = None,
    crop_area_range: Sequence[float] = (0.08, 1.0),
    random_crop: bool = True,
    random_flip: bool = True,
    shard_input: bool = True,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    shuffle_buffer_size: int = 10000,
    cache_eval: bool = False,
    # Schedule and optimizer.
    global_batch_size: int = 4096,
    eval_batch_size: Optional[int] = None,
    epochs: float = 350,
    train_steps: Optional[int] = None,
    base_learning_rate: float = 0.1,
    warmup_epochs: float = 10,
    final_learning_rate_fraction: float = 1 / 128,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 2e-5,
    label_smoothing: float = 0.1,
    ema_decay: float = 0.0,
    # Initialisation (fine-tuning).
    init_checkpoint: str = "",
    init_checkpoint_modules: str = "all",
    init_block_size: Optional[int] = None,
    init_halo_size: Optional[int] = None,
    # Runtime and bookkeeping.
    mixed_precision: str = "auto",
    mixed_precision_default: str = "float32",
    steps_per_loop: Optional[int] = None,
    checkpoint_interval: Optional[int] = None,
    summary_interval: Optional[int] = None,
    validation_interval: Optional[int] = None,
    max_checkpoints: int = 5,
    loss_upper_bound: float = 1e6,
    seed: Optional[int] = 1,
    deterministic: bool = False,
) -> cfg.ExperimentConfig:
  """Builds the Model Garden experiment for one HaloNet / SASA classification run.

  Args (the gin-bindable ones; `experiment.<name> = value`):
    model_id: a name from official_halonet.models.MODELS.
    num_classes, image_size (None: the model's published size), block_size / halo_size /
      final_width / se_ratio (None: the model's), activation (None: the model's, SiLU for H0-H7),
      stochastic_depth_rate (last block's drop rate), dropout_rate (before the classifier).
    recompute_attention: the attention layers keep only their inputs for the backward pass and
      recompute the rest there: less training memory for more time, the same results
      (docs/cpu_speed.md has the measurements).
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
    global_batch_size, eval_batch_size (None: global_batch_size), epochs or train_steps,
      base_learning_rate (per 256 examples), warmup_epochs, final_learning_rate_fraction,
      momentum, nesterov, weight_decay, label_smoothing, ema_decay (0: no EMA).
    init_checkpoint / init_checkpoint_modules ('all' or 'backbone'): start from a checkpoint;
      init_block_size / init_halo_size: the b and h it was trained with (None: the model's), which
      fix the relative-position rows it trained (official_halonet.checkpoints.restore).
    mixed_precision: 'auto' (bfloat16 on TPU, float16 on GPU, float32 on CPU), or a dtype.
    steps_per_loop, checkpoint_interval, summary_interval, validation_interval: in steps
      (None: one epoch, at most 1000 for logging), max_checkpoints, loss_upper_bound (a larger or
      NaN loss stops the run), seed (file shuffling on every host and the initial weights).
    deterministic: the same command gives the same weights: TensorFlow's op determinism
      (tf.config.experimental.enable_op_determinism; tf.data maps with random ops then run
      in order, slower) and a seeded, ordered input. Needs a seed.
  """
  spec = validate(
      model_id=model_id, num_classes=num_classes, image_size=image_size, block_size=block_size,
      halo_size=halo_size, final_width=final_width, init_block_size=init_block_size,
      init_halo_size=init_halo_size, global_batch_size=global_batch_size,
      train_input_path=train_input_path, eval_input_path=eval_input_path, tfds_name=tfds_name,
      label_offset=label_offset, mixed_precision=mixed_precision,
      init_checkpoint_modules=init_checkpoint_modules,
      stochastic_depth_rate=stochastic_depth_rate, seed=seed, deterministic=deterministic,
      train_examples=train_examples, eval_examples=eval_examples)
  image_size = spec.image_size if image_size is None else image_size
  eval_batch_size = eval_batch_size or global_batch_size
  steps = schedule(train_examples=train_examples, eval_examples=eval_examples,
                   global_batch_size=global_batch_size, eval_batch_size=eval_batch_size,
                   epochs=epochs, train_steps=train_steps, warmup_epochs=warmup_epochs,
                   steps_per_loop=steps_per_loop)
  mixing = bool(mixup_alpha or cutmix_alpha)
  # Models imported from timm evaluate with timm's crop fraction and interpolation (specs.py).
  timm_preprocessing = {k: v for k, v in (("center_crop_fraction", spec.eval_crop_fraction),
                                          ("tf_resize_method", spec.eval_interpolation)) if v}
  train_data = data.DataConfig(
      **timm_preprocessing, input_path=train_input_path, tfds_name=tfds_name, tfds_data_dir=tfds_data_dir,
      tfds_split=train_split if tfds_name else "", is_training=True,
      global_batch_size=global_batch_size, image_size=image_size, num_classes=num_classes,
      label_offset=label_offset, is_multilabel=multilabel,
      randaug_magnitude=spec.randaug_magnitude if randaug_magnitude is None else randaug_magnitude,
      mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
      mixup_label_smoothing=label_smoothing if mixing else 0.0,
      crop_area_range=tuple(crop_area_range), aug_crop=random_crop, aug_rand_hflip=random_flip,
      sharding=shard_input, shuffle_buffer_size=shuffle_buffer_size, cache=False,
      eval_num_batches=None, seed=seed, deterministic=True if deterministic else None)
  eval_data = evaluation_data(train_data, eval_input_path=eval_input_path,
                              eval_split=eval_split, eval_batch_size=eval_batch_size,
                              eval_batches=steps.eval_batches, cache_eval=cache_eval)
  task = task_lib.TaskConfig(
      model=task_lib.ModelConfig(
          num_classes=num_classes,
          input_size=[image_size, image_size, 3],
          backbone=model_factory.halonet_backbone(
              model_id, block_size=block_size, halo_size=halo_size, se_ratio=se_ratio,
              final_width=final_width, stochastic_depth_drop_rate=stochastic_depth_rate,
              recompute_attention=recompute_attention),
          dropout_rate=dropout_rate,
          norm_activation=common.NormActivation(
              activation=model_factory.activation_of(model_id, activation),
              use_sync_bn=True, norm_momentum=0.9, norm_epsilon=1e-5)),
      train_data=train_data,
      validation_data=eval_data,
      losses=task_lib.mg_config.Losses(
          label_smoothing=0.0 if mixing else label_smoothing, l2_weight_decay=weight_decay,
          one_hot=not mixing, soft_labels=mixing),
      init_checkpoint=init_checkpoint,
      init_checkpoint_modules=init_checkpoint_modules,
      init_block_size=init_block_size, init_halo_size=init_halo_size)

  optimizer = optimizer_lib.sgd_with_warmup(
      learning_rate={"type": "cosine", "cosine": {
          "initial_learning_rate": base_learning_rate * global_batch_size / 256,
          "decay_steps": max(1, steps.total_steps - steps.warmup_steps),
          "alpha": final_learning_rate_fraction,
          "offset": steps.warmup_steps}},
      warmup_steps=steps.warmup_steps, momentum=momentum, nesterov=nesterov,
      ema_decay=ema_decay)
  interval = checkpoint_interval or steps.steps_per_epoch
  trainer = cfg.TrainerConfig(
      train_steps=steps.total_steps,
      validation_steps=steps.eval_batches,
      validation_interval=validation_interval or interval,
      steps_per_loop=steps.steps_per_loop,
      summary_interval=summary_interval or steps.steps_per_loop,
      checkpoint_interval=interval,
      max_to_keep=max_checkpoints,
      loss_upper_bound=loss_upper_bound,
      recovery_max_trials=0,  # a NaN / too-large loss stops the run; the last checkpoint stays
      best_checkpoint_eval_metric="accuracy" if not multilabel else "",
      best_checkpoint_export_subdir="best_ckpt" if not multilabel else "",
      optimizer_config=optimizer)
  dtype, loss_scale = precision.resolve(mixed_precision, mixed_precision_default)
  runtime = cfg.RuntimeConfig(mixed_precision_dtype=dtype, loss_scale=loss_scale)
  return cfg.ExperimentConfig(task=task, trainer=trainer, runtime=runtime)


def validate(*, model_id, num_classes, image_size, block_size, halo_size, final_width,
             init_block_size, init_halo_size, global_batch_size, train_input_path,
             eval_input_path, tfds_name, label_offset, mixed_precision, init_checkpoint_modules,
             stochastic_depth_rate, seed, deterministic, train_examples,
             eval_examples) -> specs.ModelSpec:
  """Step 1: every setting that cannot work is a ConfigError naming it; returns the model's spec."""
  spec = specs.get_spec(model_id) if model_id in specs.MODELS else None
  _require(spec is not None, "model_id",
           f"unknown model {model_id!r}; known models: {', '.join(sorted(specs.MODELS))}")
  image_size = spec.image_size if image_size is None else image_size
  _require(isinstance(image_size, int) and image_size >= 32, "image_size",
           f"image_size must be an integer >= 32 (the backbone's output stride), got "
           f"{image_size!r}")
  _require(num_classes > 0, "num_classes", f"num_classes must be > 0, got {num_classes}")
  for name, value, minimum in (("block_size", block_size, 1), ("halo_size", halo_size, 0),
                               ("final_width", final_width, 0),
                               ("init_block_size", init_block_size, 1),
                               ("init_halo_size", init_halo_size, 0)):
    _require(value is None or (isinstance(value, int) and value >= minimum), name,
             f"{name} must be None or an integer >= {minimum}, got {value!r}")
  _require(global_batch_size > 0, "global_batch_size",
           f"global_batch_size must be > 0, got {global_batch_size}")
  _require(bool(train_input_path) != bool(tfds_name), "train_input_path",
           "set exactly one of train_input_path (TFRecord patterns) and tfds_name")
  _require(bool(eval_input_path) or bool(tfds_name), "eval_input_path",
           "set eval_input_path (TFRecord patterns) for evaluation")
  _require(label_offset >= 0, "label_offset", f"label_offset must be >= 0, got {label_offset}")
  _require(mixed_precision in precision.SETTINGS, "mixed_precision",
           f"mixed_precision must be one of {precision.SETTINGS}, got {mixed_precision!r}")
  _require(init_checkpoint_modules in ("all", "backbone"), "init_checkpoint_modules",
           f"init_checkpoint_modules must be 'all' or 'backbone', got "
           f"{init_checkpoint_modules!r}")
  _require(0 <= stochastic_depth_rate < 1, "stochastic_depth_rate",
           f"stochastic_depth_rate must be in [0, 1), got {stochastic_depth_rate}")
  _require(seed is not None or not deterministic, "deterministic",
           "deterministic = True needs a seed (experiment.seed), got None")
  _require(train_examples > 0 and eval_examples > 0, "train_examples",
           "train_examples and eval_examples must be > 0")
  return spec


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
  """Step 2: epochs -> steps; warm-up shorter than the run; one loop at most an epoch / 1000."""
  steps_per_epoch = max(1, train_examples // global_batch_size)
  total_steps = train_steps or int(round(epochs * steps_per_epoch))
  _require(total_steps > 0, "epochs", f"the run has no steps (epochs={epochs}, "
           f"train_steps={train_steps})")
  return Schedule(
      steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      warmup_steps=min(int(round(warmup_epochs * steps_per_epoch)), total_steps - 1),
      eval_batches=math.ceil(eval_examples / eval_batch_size),
      steps_per_loop=steps_per_loop or min(steps_per_epoch, 1000, total_steps))


def evaluation_data(train: data.DataConfig, *, eval_input_path, eval_split, eval_batch_size,
                    eval_batches, cache_eval) -> data.DataConfig:
  """Step 3: the evaluation DataConfig: the training one without augmentation, on eval files."""
  return dataclasses.replace(
      train, input_path=eval_input_path, tfds_split=eval_split if train.tfds_name else "",
      is_training=False, global_batch_size=eval_batch_size, randaug_magnitude=0,
      mixup_alpha=0.0, cutmix_alpha=0.0, cache=cache_eval, eval_num_batches=eval_batches)
