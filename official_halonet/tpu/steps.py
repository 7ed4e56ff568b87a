"""The TensorFlow half of tpu_check: a configuration's train and eval steps as XLA HLO.

`Steps(options, recompute)` builds, from the same gin files and bindings a TPU run reads, what that
run would build: Model Garden's experiment config with the TPU precision default (mixed_bfloat16
unless the configuration says otherwise), its task, model and optimizer through Model Garden's
trainer factory (EMA and loss scaling as configured, slots created). `hlo(kind, batch)` traces one
replica's step at a per-replica batch from `tf.TensorSpec`s — nothing runs at the real batch —
and returns the serialized HloModuleProto of `tf.function(..., jit_compile=True)`:

The halo layers take what a TPU run takes: the fused kernel where their fused_attention is unset.

  train  Model Garden's Trainer.train_step body: forward, loss with the regularization losses,
         gradients, the optimizer update with its slots (and EMA), train metrics, step counter
  eval   Trainer.eval_step body: the task's validation_step (forward, masked loss and metrics)

The HLO is TensorFlow's CPU lowering of one replica's step (TensorFlow refuses to lower for a TPU
it does not see): TPUStrategy's cross-replica gradient sum and infeed are not in it.
"""
import dataclasses
import functools
import os
import tempfile
from typing import Any, Dict, Optional, Sequence

import gin
import numpy as np
import tensorflow as tf
import tf_keras

from official.core import base_trainer
from official.core import task_factory
from official.core import train_utils
from official.modeling import performance
from official.vision.data import tf_example_builder
from official.vision.dataloaders import tfexample_utils
from official.vision.evaluation import coco_evaluator
from official.vision.tasks import maskrcnn
from official_halonet.data import pipeline
from official_halonet.layers import fused_attention
from official_halonet.models import attention_maps
from official_halonet.training import gin_config
from official_halonet.training import precision
from official_halonet.training import registry
from official_halonet.training import run_options
from official_halonet.training import runner

KINDS = ("train", "eval")
UNREAD_PATH = "tpu_check-reads-no-data"


class StepError(RuntimeError):
  """The configuration cannot be traced for tpu_check; the message says why."""


@dataclasses.dataclass
class Traced:
  """One step's HLO and what it was traced with."""
  kind: str
  batch: int
  hlo: bytes


class Steps:
  """A configuration's trainer, built once; `hlo` traces its steps at any per-replica batch."""

  def __init__(self, options: run_options.RunOptions, recompute: bool = False,
               trusted: Optional[Sequence[str]] = None):
    """`trusted`: the fused layer shapes (fused_attention.shape_key) that take the kernel where
    their setting is unset (kernel_check.py's verdict); None: every shape the kernel computes."""
    self.trusted = trusted
    options = dataclasses.replace(options, gin_bindings=list(options.gin_bindings) +
                                  _compile_only_bindings(options, recompute))
    built = run_options.build_config(options, precision.default_dtype("tpu", 0))
    self.config = built.config
    self.configurable = built.configurable
    # COCO metrics are computed on the host from what the eval step returns, which holds the
    # records' ground truth; the step's program does not depend on where the evaluator reads its
    # annotations. tpu_check reads no files, so: no annotation file (RetinaNet's evaluator would
    # load it), and Mask R-CNN's evaluator, which otherwise writes one by reading the eval records,
    # takes the ground truth from the step's outputs too.
    if getattr(self.config.task, "annotation_file", None):
      self.config.task.annotation_file = None
    self.task = task_factory.get_task(self.config.task)
    if isinstance(self.task, maskrcnn.MaskRCNNTask):
      self.task._build_coco_metrics = functools.partial(_coco_metric_from_outputs, self.task)

  @functools.cached_property
  def _input_specs(self) -> Dict[str, Any]:
    """'train' / 'eval' -> the element_spec of that step's input pipeline at batch 1."""
    data = {"train": self.config.task.train_data, "eval": self.config.task.validation_data}
    if self.configurable == registry.CLASSIFICATION:
      return {kind: pipeline.element_spec(config, 1) for kind, config in data.items()}
    return _pipeline_specs(self.task, data)

  def input_spec(self, kind: str, batch: int) -> Any:
    """The batch structure `kind`'s step takes, `batch` examples per replica."""
    return tf.nest.map_structure(lambda s: tf.TensorSpec([batch] + s.shape[1:], s.dtype),
                                 self._input_specs[kind])

  @functools.cached_property
  def trainer(self) -> base_trainer.Trainer:
    """Model Garden's trainer (create_trainer's, with stand-in datasets: its loops never run),
    built on first use under the run's precision policy (the process's global policy is put back
    afterwards: layers keep the policy they were built with), optimizer slots created; StepError
    when Model Garden refuses the configuration."""
    previous = tf_keras.mixed_precision.global_policy()
    performance.set_mixed_precision_policy(self.config.runtime.mixed_precision_dtype)
    try:
      trainer = base_trainer.Trainer(
          self.config, self.task, model=self.task.build_model(),
          optimizer=train_utils.create_optimizer(self.task, self.config), train=True,
          evaluate=True, train_dataset=_stand_in(self.input_spec("train", 1)),
          validation_dataset=_stand_in(self.input_spec("eval", 1)))
      runner.create_optimizer_weights(trainer.optimizer, trainer.model)
    except (tf.errors.OpError, ValueError) as e:
      raise StepError(f"Model Garden's trainer cannot be built from this configuration: "
                      f"{_first_line(e)}") from None
    finally:
      tf_keras.mixed_precision.set_global_policy(previous)
    return trainer

  @property
  def num_parameters(self) -> int:
    return int(sum(v.shape.num_elements() for v in self.trainer.model.weights))

  @property
  def has_attention(self) -> bool:
    return bool(attention_maps.attention_layers(self.trainer.model))

  @property
  def global_batch_size(self) -> int:
    return self.config.task.train_data.global_batch_size

  @property
  def eval_batch_size(self) -> int:
    return self.config.task.validation_data.global_batch_size

  def hlo(self, kind: str, batch: int, stage: str = "hlo_serialized") -> Traced:
    """The HLO of one replica's `kind` step ('train' or 'eval') at `batch` images: a serialized
    HloModuleProto, or text with stage='hlo'."""
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    trainer = self.trainer
    spec = self.input_spec(kind, batch)

    def train(inputs):
      logs = trainer.task.train_step(inputs, model=trainer.model, optimizer=trainer.optimizer,
                                     metrics=trainer.train_metrics)
      trainer.train_loss.update_state(logs[trainer.task.loss])
      trainer.global_step.assign_add(1)
      return logs[trainer.task.loss]

    def evaluate(inputs):
      logs = trainer.task.validation_step(inputs, model=trainer.model,
                                          metrics=trainer.validation_metrics)
      if trainer.task.loss in logs:
        trainer.validation_loss.update_state(logs[trainer.task.loss])
      return [t for t in tf.nest.flatten(logs) if isinstance(t, tf.Tensor)]  # sent to the host

    body = train if kind == "train" else evaluate
    # The compiler-IR call takes flat TensorSpecs, not the batch's nested structure.
    step = tf.function(lambda *flat: body(tf.nest.pack_sequence_as(spec, flat)), jit_compile=True)
    try:
      # As a TPU run traces it: halo layers left unset take the fused kernel for the shapes that
      # run's check on the chip (training/fused_check.py) would pass, kernel_check.py's stand-in.
      with fused_attention.kernel_by_default("tpu", self.trusted):
        hlo = step.experimental_get_compiler_ir(*tf.nest.flatten(spec))(stage=stage)
    except (tf.errors.OpError, ValueError) as e:
      raise StepError(f"{kind} step at batch {batch} does not lower to XLA: "
                      f"{_first_line(e)}") from None
    return Traced(kind, batch, hlo)


def _compile_only_bindings(options: run_options.RunOptions, recompute: bool):
  """Bindings a compile needs beyond the user's: input paths that are never read (when the
  configuration names none: shapes come from the config, not the files) and the recompute switch."""
  gin_config.parse(options.gin_files, options.gin_bindings)
  name = registry.bound_configurable()
  bound = gin.get_bindings(name)
  extra = [f"{name}.recompute_attention = True"] if recompute else []
  if name == registry.CLASSIFICATION and not bound.get("tfds_name"):
    extra += [f"{name}.{key} = '{UNREAD_PATH}'" for key in ("train_input_path", "eval_input_path")
              if not bound.get(key)]
  return extra


def _coco_metric_from_outputs(task) -> None:
  """Gives `task` the COCO evaluator that reads ground truth from the eval step's outputs."""
  task.coco_metric = coco_evaluator.COCOEvaluator(
      annotation_file=None, include_mask=task.task_config.model.include_mask,
      per_category_metrics=task.task_config.per_category_metrics)


def _stand_in(spec: Any) -> tf.data.Dataset:
  """One batch of zeros with the structure `spec` (the trainer's datasets are never iterated)."""
  return tf.data.Dataset.from_tensors(tf.nest.map_structure(
      lambda s: tf.zeros(s.shape, s.dtype), spec))


def _pipeline_specs(task, data: Dict[str, Any]) -> Dict[str, Any]:
  """element_spec of Model Garden's own input pipeline for each data config, read from one
  synthetic COCO-format record (a 64x64 image with one box and its mask): detection parsers
  resize to the model's size, so the record's content does not change the shapes."""
  example = (tf_example_builder.TfExampleBuilder()
             .add_image_matrix_feature(np.zeros([64, 64, 3], np.uint8), image_format="PNG",
                                       image_source_id=b"1")
             .add_boxes_feature([0.25], [0.75], [0.25], [0.75], [1])
             .add_ints_feature("image/object/is_crowd", [0])
             .add_instance_mask_matrices_feature(np.ones([1, 64, 64], np.uint8))
             .example)
  with tempfile.TemporaryDirectory(prefix="tpu_check_") as tmp:
    path = os.path.join(tmp, "one.tfrecord")
    tfexample_utils.dump_to_tfrecord(path, [example])
    return {kind: task.build_inputs(config.replace(input_path=path, global_batch_size=1,
                                                   tfds_name="")).element_spec
            for kind, config in data.items()}


def _first_line(error: Any) -> str:
  text = getattr(error, "message", None) or str(error)
  return " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(error).__name__
