"""The HaloNet image-classification task: Model Garden's, with our inputs and masked evaluation.

Everything else — model building through the backbone factory ('halonet'), losses (label smoothing,
softmax / sigmoid, L2 weight decay as regularization losses), optimizer with EMA and loss scaling,
checkpoint initialisation — is Model Garden's `ImageClassificationTask`. What changes:

  build_inputs     official_halonet.data.build_dataset: label offset and range checks, 21k
                   multi-label, corrupt-record reporting, padded eval batches.
  validation_step  eval batches carry a mask (1 real example, 0 padding); loss and every metric are
                   weighted by it, and `eval_examples` counts the real examples seen.
"""
import dataclasses
from typing import Any, List, Optional, Tuple

import tensorflow as tf
import tf_keras

from official.core import task_factory
from official.vision.configs import image_classification as mg_config
from official.vision.tasks import image_classification as mg_task
from official_halonet import data
from official_halonet.data import element_keys
from official_halonet.models import factory as model_factory

EVAL_EXAMPLES = "eval_examples"


@dataclasses.dataclass
class ModelConfig(mg_config.ImageClassificationModel):
  """Model Garden's classification model config whose backbone one-of knows 'halonet'."""
  backbone: model_factory.Backbone = dataclasses.field(
      default_factory=lambda: model_factory.Backbone(type="halonet"))


@dataclasses.dataclass
class TaskConfig(mg_config.ImageClassificationTask):
  """Model Garden's classification task config with HaloNet's model and data configs."""
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  train_data: data.DataConfig = dataclasses.field(
      default_factory=lambda: data.DataConfig(is_training=True))
  validation_data: data.DataConfig = dataclasses.field(
      default_factory=lambda: data.DataConfig(is_training=False))
  # b and h of init_checkpoint's halo layers (None: the backbone model's); see checkpoints.restore.
  init_block_size: Optional[int] = None
  init_halo_size: Optional[int] = None


@task_factory.register_task_cls(TaskConfig)
class HaloNetClassificationTask(mg_task.ImageClassificationTask):
  """Image classification with HaloNet inputs and mask-weighted evaluation."""

  def build_inputs(self, params: data.DataConfig,
                   input_context: Optional[tf.distribute.InputContext] = None):
    return data.build_dataset(params, input_context)

  def initialize(self, model: tf_keras.Model):
    """Starts from `init_checkpoint` (fine-tuning); Model Garden calls it when model_dir is empty.

    Unlike Model Garden's, which restores what matches and fails on any shape difference, this
    copies the backbone, linearly interpolates relative-position tables whose readable offsets
    changed with b and h, and for init_checkpoint_modules='backbone' sets the classifier to zeros;
    anything else that differs is an error naming it (official_halonet.checkpoints.restore).
    """
    if not self.task_config.init_checkpoint:
      return
    from official_halonet.checkpoints import restore  # pylint: disable=g-import-not-at-top
    restore.restore(model, self.task_config.init_checkpoint,
                    modules=self.task_config.init_checkpoint_modules, resize_tables=True,
                    pretrained_block_size=self.task_config.init_block_size,
                    pretrained_halo_size=self.task_config.init_halo_size)

  def build_metrics(self, training: bool = True):
    metrics = super().build_metrics(training)
    if not training:
      metrics.append(tf_keras.metrics.Sum(name=EVAL_EXAMPLES))
    return metrics

  def _dense_labels(self, labels: tf.Tensor) -> tf.Tensor:
    """Integer class ids -> one-hot when the loss / metrics are one-hot (as Model Garden does)."""
    losses = self.task_config.losses
    if (losses.one_hot or losses.soft_labels) and not self.task_config.train_data.is_multilabel:
      return tf.one_hot(labels, self.task_config.model.num_classes)
    return labels

  def validation_step(self, inputs: Tuple[Any, Any], model: tf_keras.Model,
                      metrics: Optional[List[Any]] = None):
    """One eval batch: loss and metrics weighted by the padding mask."""
    features, targets = inputs
    labels, mask = self._dense_labels(targets[element_keys.LABELS]), targets[element_keys.MASK]
    outputs = tf.cast(self.inference_step(features, model), tf.float32)
    if self.task_config.train_data.is_multilabel or self.task_config.losses.use_binary_cross_entropy:
      per_example = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(
          labels=tf.cast(labels, tf.float32), logits=outputs), axis=-1)
    elif labels.shape.rank == 2:
      per_example = tf.nn.softmax_cross_entropy_with_logits(labels, outputs)
    else:
      per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, outputs)
    loss = tf.math.divide_no_nan(tf.reduce_sum(per_example * mask), tf.reduce_sum(mask))
    logs = {self.loss: loss}
    for metric in metrics or []:
      if metric.name == EVAL_EXAMPLES:
        metric.update_state(mask)
      else:
        metric.update_state(labels, outputs, sample_weight=mask)
    return logs
