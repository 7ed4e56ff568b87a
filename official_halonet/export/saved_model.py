"""SavedModel export of a trained classification run, with serving signatures.

    python main.py --mode=export --model_dir=/runs/h0                       # the run's operative gin
    python main.py --mode=export --gin_file=gin/h0.gin --model_dir=/runs/h0 --export_dir=/srv/h0

`export_from_run(options, export_dir)` rebuilds the run's ExperimentConfig (from options.gin_files
and gin_bindings, or, with no gin files, from model_dir/operative_config.gin that the run wrote),
builds the model through the task, restores the latest checkpoint in model_dir strictly (every
variable present with its shape, or an error that names the class count / block and halo size /
model that differ; nothing is half-restored), and writes a SavedModel. The exported weights are the
EMA averages when the run used EMA (`experiment.ema_decay`; see checkpoints/match.py for where
they are read from), the raw weights otherwise. The model is exported in float32 whatever the
run's mixed-precision policy (variables are float32 under every policy, so the checkpoint fits).

Signatures (each input is named `inputs`; the batch dimension is free):

  serving_default, image_bytes   string [B]: encoded JPEG / PNG / GIF / BMP images, any size
  image_tensor                   float32 [B, H, W, 3]: RGB pixel values in [0, 255], any H, W
  tf_example                     string [B]: serialized tf.Example with the image under
                                 'image/encoded' (ImageNet TFRecord format)

Every signature preprocesses exactly as evaluation does (the same Model Garden eval parser the
input pipeline uses: center crop of `center_crop_fraction` of the short side, resize to the
model's size with `tf_resize_method`, ImageNet mean / std normalisation on the 0..255 scale), so
an image gives the same numbers through any signature and through `main.py --mode=eval`.
Outputs:

  logits                float32 [B, num_classes]
  probabilities         float32 [B, num_classes]: softmax (sigmoid for multi-label 21k runs)
  top_k_classes         int32 [B, k]: class ids (0-based, i.e. stored label - label_offset),
                        most probable first, k = min(5, num_classes)
  top_k_probabilities   float32 [B, k]
"""
import dataclasses
import os
from typing import Dict, Optional, Tuple

import gin
import tensorflow as tf
import tf_keras

from official.core import config_definitions as cfg
from official.core import export_base
from official.core import task_factory
from official.core import train_utils
from official_halonet.data import pipeline
from official_halonet.checkpoints import match
from official_halonet.checkpoints import restore
from official_halonet.training import gin_config
from official_halonet.training import runner
from official_halonet.training import task as task_lib  # noqa: F401  (registers the task)

DEFAULT_SUBDIR = "saved_model"
SIGNATURES = ("serving_default", "image_bytes", "image_tensor", "tf_example")
IMAGE_KEY = "image/encoded"
TOP_K = 5
_UNUSED_INPUT = "/export/needs/no/data-*"


@dataclasses.dataclass
class RestoredRun:
  """A run's config and its model with the checkpoint's weights."""
  config: cfg.ExperimentConfig
  model: tf_keras.Model
  checkpoint: str
  step: Optional[int]
  used_ema: bool
  gin_text: str


def load_config(options: runner.RunOptions) -> Tuple[cfg.ExperimentConfig, str]:
  """(ExperimentConfig, gin text in force) of a run: its gin files, or its operative config.

  Data paths do not matter for export; when the gin files leave them unbound (they are usually
  given on the training command line), a placeholder is bound so the config can be built.
  """
  gin_files = list(options.gin_files)
  if not gin_files:
    operative = os.path.join(options.model_dir, gin_config.OPERATIVE_CONFIG)
    if not options.model_dir or not tf.io.gfile.exists(operative):
      raise runner.RunError(
          f"export needs the run's configuration: pass --gin_file (and --gin_bindings) as for "
          f"training, or a --model_dir holding {gin_config.OPERATIVE_CONFIG} (written by every "
          f"run); {operative or '--model_dir'} does not exist")
    gin_files = [operative]
  options = dataclasses.replace(options, gin_files=gin_files)
  try:
    config = runner.build_config(options).config
  except runner.ConfigurationError as e:
    if e.parameter not in ("train_input_path", "eval_input_path"):
      raise
    options = dataclasses.replace(options, gin_bindings=list(options.gin_bindings) + [
        f"{e.configurable}.train_input_path = '{_UNUSED_INPUT}'",
        f"{e.configurable}.eval_input_path = '{_UNUSED_INPUT}'"])
    config = runner.build_config(options).config
  return config, gin.config_str()


def build_model(config: cfg.ExperimentConfig) -> tf_keras.Model:
  """The run's classification model, built by its task in float32."""
  policy = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy("float32")
  try:
    return task_factory.get_task(config.task).build_model()
  finally:
    tf_keras.mixed_precision.set_global_policy(policy)


def uses_ema(config: cfg.ExperimentConfig) -> bool:
  return config.trainer.optimizer_config.ema is not None


def _mismatch_context(config: cfg.ExperimentConfig, path: str) -> str:
  halonet = config.task.model.backbone.halonet
  return (f"checkpoint {path} does not match the model built from the configuration (model_id "
          f"{halonet.model_id!r}, num_classes {config.task.model.num_classes}, block_size "
          f"{halonet.block_size}, halo_size {halonet.halo_size}; None: the model's own); nothing "
          f"was restored")


def restore_run(options: runner.RunOptions, checkpoint_path: str = "") -> RestoredRun:
  """Config + model of a run with the weights of its latest checkpoint (or `checkpoint_path`)."""
  config, gin_text = load_config(options)
  path = checkpoint_path or options.model_dir
  if not path:
    raise runner.RunError("export needs --model_dir (the run's checkpoints)")
  model = build_model(config)
  try:
    restored = restore.restore(model, path, use_ema=uses_ema(config),
                               context=_mismatch_context(config, path))
  except (match.CheckpointMismatchError, FileNotFoundError) as e:
    raise runner.RunError(str(e)) from None
  step = restored.checkpoint.rsplit("-", 1)[-1]
  return RestoredRun(config=config, model=model, checkpoint=restored.checkpoint,
                     step=int(step) if step.isdigit() else None,
                     used_ema=uses_ema(config), gin_text=gin_text)


class ClassifierModule(export_base.ExportModule):
  """Model Garden export module: the classifier behind image-bytes / tensor / tf.Example inputs."""

  def __init__(self, params: cfg.ExperimentConfig, model: tf_keras.Model, top_k: int = TOP_K):
    super().__init__(params, model,
                     inference_step=lambda inputs, model: model(inputs, training=False))
    eval_data = dataclasses.replace(params.task.validation_data, is_training=False,
                                    dtype="float32")
    self._size = int(eval_data.image_size)
    self._parser = pipeline.ImageParser(eval_data)  # what the eval input pipeline runs
    self._multilabel = bool(params.task.train_data.is_multilabel)
    self._top_k = min(top_k, params.task.model.num_classes)

  def _map(self, fn, inputs):
    return tf.map_fn(fn, inputs, parallel_iterations=32,
                     fn_output_signature=tf.TensorSpec([self._size, self._size, 3], tf.float32))

  def serve(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Normalised [B, S, S, 3] images -> logits, probabilities, top-k."""
    logits = tf.cast(self.inference_step(images), tf.float32)
    probabilities = tf.sigmoid(logits) if self._multilabel else tf.nn.softmax(logits)
    top = tf.math.top_k(probabilities, k=self._top_k)
    return {"logits": logits, "probabilities": probabilities,
            "top_k_classes": tf.cast(top.indices, tf.int32), "top_k_probabilities": top.values}

  @tf.function
  def serve_image_bytes(self, inputs):
    with tf.device("cpu:0"):
      images = self._map(self._parser, inputs)
    return self.serve(images)

  @tf.function
  def serve_image_tensor(self, inputs):
    with tf.device("cpu:0"):
      images = self._map(self._parser.parse_pixels, tf.cast(inputs, tf.float32))
    return self.serve(images)

  @tf.function
  def serve_tf_example(self, inputs):
    with tf.device("cpu:0"):
      encoded = tf.io.parse_example(
          inputs, {IMAGE_KEY: tf.io.FixedLenFeature((), tf.string)})[IMAGE_KEY]
      images = self._map(self._parser, encoded)
    return self.serve(images)

  def get_inference_signatures(self, function_keys: Dict[str, str]):
    """{signature name: concrete function} for keys 'image_bytes', 'image_tensor', 'tf_example'."""
    specs = {
        "image_bytes": (self.serve_image_bytes, tf.TensorSpec([None], tf.string, name="inputs")),
        "image_tensor": (self.serve_image_tensor,
                         tf.TensorSpec([None, None, None, 3], tf.float32, name="inputs")),
        "tf_example": (self.serve_tf_example, tf.TensorSpec([None], tf.string, name="inputs")),
    }
    signatures = {}
    for key, name in function_keys.items():
      if key not in specs:
        raise ValueError(f"unknown input type {key!r}; known: {sorted(specs)}")
      function, spec = specs[key]
      signatures[name] = function.get_concrete_function(spec)
    return signatures


def export_saved_model(model: tf_keras.Model, config: cfg.ExperimentConfig, export_dir: str,
                       gin_text: str = "") -> str:
  """Writes the SavedModel with every signature (+ params.yaml, operative_config.gin); its path."""
  module = ClassifierModule(config, model)
  signatures = module.get_inference_signatures(
      {"image_bytes": "image_bytes", "image_tensor": "image_tensor", "tf_example": "tf_example"})
  signatures["serving_default"] = signatures["image_bytes"]
  tf.io.gfile.makedirs(export_dir)
  tf.saved_model.save(module, export_dir, signatures=signatures)
  train_utils.serialize_config(config, export_dir)
  if gin_text:
    with tf.io.gfile.GFile(os.path.join(export_dir, gin_config.OPERATIVE_CONFIG), "w") as f:
      f.write(gin_text)
  return export_dir


def export_from_run(options: runner.RunOptions, export_dir: str = "",
                    checkpoint_path: str = "") -> str:
  """`main.py --mode=export`: the run's latest checkpoint as a SavedModel; returns its path.

  Args:
    options: the run's gin_files / gin_bindings (empty gin_files: model_dir/operative_config.gin)
      and model_dir (its checkpoints).
    export_dir: where to write; default <model_dir>/saved_model.
    checkpoint_path: a checkpoint prefix to export instead of model_dir's latest.

  Raises:
    runner.RunError: no configuration or checkpoint, or a checkpoint that does not match.
  """
  run = restore_run(options, checkpoint_path)
  export_dir = export_dir or os.path.join(options.model_dir, DEFAULT_SUBDIR)
  export_saved_model(run.model, run.config, export_dir, run.gin_text)
  print(f"export | {run.checkpoint} ({'EMA' if run.used_ema else 'raw'} weights) -> SavedModel "
        f"{export_dir} | signatures {', '.join(SIGNATURES)}", flush=True)
  return export_dir
