"""The TensorFlow half of tpu_check: a configuration's train and eval steps as XLA HLO.

`Steps(options, recompute)` builds, from the same gin files and bindings a TPU run reads, what that
run would build: Model Garden's experiment config with the TPU precision default (mixed_bfloat16
unless the configuration says otherwise), its task, model and optimizer through Model Garden's
trainer factory (EMA and loss scaling as configured, slots created). `hlo(kind, batch)` traces one
replica's step at a per-replica batch from `tf.TensorSpec`s — nothing runs at the real batch —
and returns the serialized HloModuleProto of `tf.function(..., jit_compile=True)`:

  train  Model Garden's Trainer.train_step body: forward, loss with the regularization losses,
         gradients, the optimizer update with its slots (and EMA), train metrics, step counter
  eval   Trainer.eval_step body: the task's validation_step (forward, masked loss and metrics)

The HLO is TensorFlow's CPU lowering of one replica's step (TensorFlow refuses to lower for a TPU
it does not see): TPUStrategy's cross-replica gradient sum and infeed are not in it.
"""
import dataclasses
from typing import Any, Optional

import gin
import tensorflow as tf

from official.core import base_trainer
from official.core import task_factory
from official.core import train_utils
from official.modeling import performance
from official_halonet.data import pipeline
from official_halonet.models import attention_maps
from official_halonet.training import precision
from official_halonet.training import registry
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
  num_parameters: int


class Steps:
  """A configuration's trainer, built once; `hlo` traces its steps at any per-replica batch."""

  def __init__(self, options: runner.RunOptions, recompute: bool = False):
    options = dataclasses.replace(options, gin_bindings=list(options.gin_bindings) +
                                  _compile_only_bindings(options, recompute))
    built = runner.build_config(options, precision.default_dtype("tpu", 0))
    if built.configurable != registry.CLASSIFICATION:
      raise StepError(f"tpu_check compiles classification experiments (`{registry.CLASSIFICATION}`"
                      f"); this configuration binds `{built.configurable}`")
    self.config = built.config
    self.configurable = built.configurable
    performance.set_mixed_precision_policy(self.config.runtime.mixed_precision_dtype)
    task = task_factory.get_task(self.config.task)
    # Model Garden's create_trainer, with stand-in datasets: the trainer's loops are never run.
    self.trainer = base_trainer.Trainer(
        self.config, task, model=task.build_model(),
        optimizer=train_utils.create_optimizer(task, self.config), train=True, evaluate=True,
        train_dataset=_stand_in(self.config.task.train_data),
        validation_dataset=_stand_in(self.config.task.validation_data))
    runner.create_optimizer_weights(self.trainer.optimizer, self.trainer.model)
    self.num_parameters = int(sum(v.shape.num_elements() for v in self.trainer.model.weights))
    self.has_attention = bool(attention_maps.attention_layers(self.trainer.model))

  @property
  def global_batch_size(self) -> int:
    return self.config.task.train_data.global_batch_size

  @property
  def eval_batch_size(self) -> int:
    return self.config.task.validation_data.global_batch_size

  def hlo(self, kind: str, batch: int) -> Traced:
    """The serialized HLO of one replica's `kind` step ('train' or 'eval') at `batch` images."""
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    trainer = self.trainer
    data = self.config.task.train_data if kind == "train" else self.config.task.validation_data
    spec = pipeline.element_spec(data, batch)

    def train(inputs):
      logs = trainer.task.train_step(inputs, model=trainer.model, optimizer=trainer.optimizer,
                                     metrics=trainer.train_metrics)
      trainer.train_loss.update_state(logs[trainer.task.loss])
      trainer.global_step.assign_add(1)
      return logs[trainer.task.loss]

    def evaluate(inputs):
      logs = trainer.task.validation_step(inputs, model=trainer.model,
                                          metrics=trainer.validation_metrics)
      trainer.validation_loss.update_state(logs[trainer.task.loss])
      return logs[trainer.task.loss]

    body = train if kind == "train" else evaluate
    # The compiler-IR call takes flat TensorSpecs, not the batch's nested structure.
    step = tf.function(lambda *flat: body(tf.nest.pack_sequence_as(spec, flat)), jit_compile=True)
    try:
      hlo = step.experimental_get_compiler_ir(*tf.nest.flatten(spec))(stage="hlo_serialized")
    except (tf.errors.OpError, ValueError) as e:
      raise StepError(f"{kind} step at batch {batch} does not lower to XLA: "
                      f"{_first_line(e)}") from None
    return Traced(kind, batch, hlo, self.num_parameters)


def _compile_only_bindings(options: runner.RunOptions, recompute: bool):
  """Bindings a compile needs beyond the user's: input paths that are never read (when the
  configuration names none: shapes come from the config, not the files) and the recompute switch."""
  runner.gin_config.parse(options.gin_files, options.gin_bindings)
  name = registry.bound_configurable()
  bound = gin.get_bindings(name)
  extra = [f"{name}.recompute_attention = True"] if recompute else []
  if name == registry.CLASSIFICATION and not bound.get("tfds_name"):
    extra += [f"{name}.{key} = '{UNREAD_PATH}'" for key in ("train_input_path", "eval_input_path")
              if not bound.get(key)]
  return extra


def _stand_in(data) -> tf.data.Dataset:
  """One batch of zeros with the structure of `data`'s pipeline (never iterated)."""
  spec = pipeline.element_spec(data, 1)
  return tf.data.Dataset.from_tensors(tf.nest.map_structure(
      lambda s: tf.zeros(s.shape, s.dtype), spec))


def _first_line(error: Any) -> str:
  text = getattr(error, "message", None) or str(error)
  return " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(error).__name__
