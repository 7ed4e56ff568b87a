"""SavedModel export of a trained classification run, with serving signatures.

    python main.py --mode=export --model_dir=/runs/h0                       # the run's operative gin
    python main.py --mode=export --gin_file=gin/h0.gin --model_dir=/runs/h0 --export_dir=/srv/h0

`export_from_run(options, export_dir)` rebuilds the run's ExperimentConfig (from options.gin_files
and gin_bindings, or, with no gin files, from model_dir/operative_config.gin that the run wrote),
builds the model through the task, restores a checkpoint strictly (every variable present with
its shape, or an error that names the class count / block and halo size / model that differ;
nothing is half-restored), and writes a SavedModel. Which checkpoint: `--checkpoint=latest`
(default: model_dir's newest), `--checkpoint=best` (the best-evaluated one Model Garden keeps in
model_dir/best_ckpt) or a checkpoint path. The exported weights are the EMA averages when the run
used EMA (`experiment.ema_decay`; see checkpoints/match.py for where they are read from), the
raw weights otherwise. The model is exported in float32 whatever the run's mixed-precision policy
(variables are float32 under every policy, so the checkpoint fits). The export summary line and
<export_dir>/metadata.json say which checkpoint, its step and its eval accuracy (when the run
evaluated that step).

Signatures (each input is named `inputs`; the batch dimension is free):

  serving_default, image_bytes   string [B]: encoded JPEG / PNG / GIF (first frame) / BMP /
                                 still WebP images, any size (1x1 included)
  image_tensor                   float32 [B, H, W, 3]: RGB pixel values in [0, 255], any H, W >= 1
  tf_example                     string [B]: serialized tf.Example with the image under
                                 'image/encoded' (ImageNet TFRecord format)

Bad input: an image that does not decode, or NaN / infinite pixels, stops the call with an
InvalidArgumentError '<signature> input <i> of the batch: <reason>' (the first bad input, 0-based).
An empty batch (B = 0) gives empty outputs of the shapes below. Images are decoded as training
and eval decode them (official_halonet.data.images).

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

The SavedModel holds the signatures and the model's variables (`loaded.model_variables`, in the
model's variable order), not Keras's per-layer call traces: serving needs only the signatures, and
those traces (every layer's call, in training and inference mode) made the export slower by half
and a third larger. To get a
Keras model back, rebuild it from the run (official_halonet.visualize.load_model, or the
checkpoint) rather than tf_keras.models.load_model on the export.
"""
import contextlib
import copy
import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

import gin
import tensorflow as tf
import tf_keras

from official.core import config_definitions as cfg
from official.core import export_base
from official.core import task_factory
from official.core import train_utils
from official_halonet.data import image_parser
from official_halonet.data import images as data_images
from official_halonet.export import formats as formats_lib
from official_halonet.checkpoints import match
from official_halonet.checkpoints import restore
from official_halonet.training import gin_config
from official_halonet.training import run_options
from official_halonet.training import task as task_lib  # noqa: F401  (registers the task)

DEFAULT_SUBDIR = "saved_model"
SIGNATURES = ("serving_default", "image_bytes", "image_tensor", "tf_example")
IMAGE_KEY = "image/encoded"
TOP_K = 5
METADATA = "metadata.json"
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
  choice: str = match.LATEST  # 'latest', 'best' or 'path'
  eval_accuracy: Optional[float] = None  # the run's eval accuracy at `step`, when it evaluated


def load_config(options: run_options.RunOptions) -> Tuple[cfg.ExperimentConfig, str]:
  """(ExperimentConfig, gin text in force) of a run: its gin files, or its operative config.

  Data paths do not matter for export; when the gin files leave them unbound (they are usually
  given on the training command line), a placeholder is bound so the config can be built.
  """
  gin_files = list(options.gin_files)
  if not gin_files:
    operative = os.path.join(options.model_dir, gin_config.OPERATIVE_CONFIG)
    if not options.model_dir or not tf.io.gfile.exists(operative):
      raise run_options.RunError(
          f"export needs the run's configuration: pass --gin_file (and --gin_bindings) as for "
          f"training, or a --model_dir holding {gin_config.OPERATIVE_CONFIG} (written by every "
          f"run); {operative or '--model_dir'} does not exist")
    gin_files = [operative]
  options = dataclasses.replace(options, gin_files=gin_files)
  try:
    config = run_options.build_config(options).config
  except run_options.ConfigurationError as e:
    if e.parameter not in ("train_input_path", "eval_input_path"):
      raise
    options = dataclasses.replace(options, gin_bindings=list(options.gin_bindings) + [
        f"{e.configurable}.train_input_path = '{_UNUSED_INPUT}'",
        f"{e.configurable}.eval_input_path = '{_UNUSED_INPUT}'"])
    config = run_options.build_config(options).config
  return config, gin.config_str()


def build_model(config: cfg.ExperimentConfig) -> tf_keras.Model:
  """The run's classification model, built by its task in float32 with XLA's attention (a run's
  fused_attention kernel runs on TPU only; the weights are the same)."""
  backbone = config.task.model.backbone
  if backbone.type == "halonet" and backbone.halonet.fused_attention:
    config = copy.deepcopy(config)
    config.task.model.backbone.halonet.fused_attention = None
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


def restore_run(options: run_options.RunOptions, checkpoint_path: str = "") -> RestoredRun:
  """Config + model of a run with the weights of one of its checkpoints.

  checkpoint_path: '' or 'latest' (model_dir's newest), 'best' (model_dir/best_ckpt, Model
  Garden's best-evaluated checkpoint), or a checkpoint directory / prefix.
  """
  config, gin_text = load_config(options)
  trainer = config.trainer
  try:
    path = match.resolve_checkpoint(match.choose(
        options.model_dir, checkpoint_path, trainer.best_checkpoint_export_subdir))
    model = build_model(config)
    # A best checkpoint holds the EMA averages as the model's variables (see checkpoints/match.py).
    swapped = match.is_best_checkpoint(path)
    found = restore.restore(model, path, use_ema=uses_ema(config) and not swapped,
                            context=_mismatch_context(config, path))
  except (match.CheckpointMismatchError, FileNotFoundError) as e:
    raise run_options.RunError(str(e)) from None
  choice = (checkpoint_path or match.LATEST) if checkpoint_path in (
      "", match.LATEST, match.BEST) else "path"
  accuracy = match.evaluated_metric(
      options.model_dir, found.step, "accuracy", trainer.best_checkpoint_export_subdir,
      trainer.validation_summary_subdir)
  return RestoredRun(config=config, model=model, checkpoint=found.checkpoint, step=found.step,
                     used_ema=uses_ema(config), gin_text=gin_text, choice=choice,
                     eval_accuracy=accuracy)


def describe_checkpoint(run: RestoredRun) -> str:
  """'<path> (best, step 4, eval accuracy 0.9333, EMA weights)' for summary lines."""
  accuracy = ("not evaluated at this step" if run.eval_accuracy is None
              else f"eval accuracy {run.eval_accuracy:.4f}")
  return (f"{run.checkpoint} ({run.choice}, step {run.step}, {accuracy}, "
          f"{'EMA' if run.used_ema else 'raw'} weights)")


def metadata(run: RestoredRun) -> Dict[str, Any]:
  """The SavedModel's metadata.json: which checkpoint, its step and eval accuracy, the model."""
  model = run.config.task.model
  return {
      "checkpoint": run.checkpoint, "checkpoint_choice": run.choice, "checkpoint_step": run.step,
      "eval_accuracy": run.eval_accuracy, "ema_weights": run.used_ema,
      "model_id": model.backbone.halonet.model_id, "num_classes": int(model.num_classes),
      "image_size": int(model.input_size[0]), "signatures": list(SIGNATURES),
      "tensorflow": tf.__version__,
  }


class ClassifierModule(export_base.ExportModule):
  """Model Garden export module: the classifier behind image-bytes / tensor / tf.Example inputs."""

  def __init__(self, params: cfg.ExperimentConfig, model: tf_keras.Model, top_k: int = TOP_K):
    super().__init__(params, model,
                     inference_step=lambda inputs, model: model(inputs, training=False))
    eval_data = dataclasses.replace(params.task.validation_data, is_training=False,
                                    dtype="float32")
    self._parser = image_parser.ImageParser(eval_data)  # what the eval input pipeline runs
    self._multilabel = bool(params.task.train_data.is_multilabel)
    self._num_classes = int(params.task.model.num_classes)
    self._top_k = min(top_k, self._num_classes)

  def _parse_bytes(self, encoded: tf.Tensor, signature: str) -> tf.Tensor:
    return data_images.parse_batch(self._parser, encoded, self._parser.output_shape,
                                   self._parser.dtype, signature)

  def serve(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Normalised [B, S, S, 3] images -> logits, probabilities, top-k (B = 0: empty outputs)."""
    logits = tf.cond(
        tf.shape(images)[0] > 0, lambda: tf.cast(self.inference_step(images), tf.float32),
        lambda: tf.zeros([0, self._num_classes], tf.float32))
    probabilities = tf.sigmoid(logits) if self._multilabel else tf.nn.softmax(logits)
    top = tf.math.top_k(probabilities, k=self._top_k)
    return {"logits": logits, "probabilities": probabilities,
            "top_k_classes": tf.cast(top.indices, tf.int32), "top_k_probabilities": top.values}

  @tf.function
  def serve_image_bytes(self, inputs):
    with tf.device("cpu:0"):
      images = self._parse_bytes(inputs, "image_bytes")
    return self.serve(images)

  @tf.function
  def serve_image_tensor(self, inputs):
    with tf.device("cpu:0"):
      pixels = data_images.check_pixels(tf.cast(inputs, tf.float32), "image_tensor")
      images = tf.map_fn(self._parser.parse_pixels, pixels, parallel_iterations=32,
                         fn_output_signature=tf.TensorSpec(self._parser.output_shape,
                                                           self._parser.dtype))
    return self.serve(images)

  @tf.function
  def serve_tf_example(self, inputs):
    with tf.device("cpu:0"):
      # A missing image feature reads as empty bytes, reported with the input's position.
      encoded = tf.io.parse_example(
          inputs, {IMAGE_KEY: tf.io.FixedLenFeature((), tf.string, default_value="")})[IMAGE_KEY]
      images = self._parse_bytes(encoded, "tf_example")
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


def _without_keras_traces():
  """tf_keras's own switch (Model.save's save_traces=False) for a tf.saved_model.save of an object
  that tracks a Keras model; a no-op context if a future tf_keras moves it."""
  try:
    from tf_keras.src.saving.legacy.saved_model import utils  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  scope = getattr(utils, "keras_option_scope", None)
  return scope(save_traces=False) if scope else contextlib.nullcontext()


def export_saved_model(model: tf_keras.Model, config: cfg.ExperimentConfig, export_dir: str,
                       gin_text: str = "", meta: Optional[Dict[str, Any]] = None) -> str:
  """Writes the SavedModel with every signature (+ params.yaml, operative_config.gin and, given
  `meta`, metadata.json); returns its path."""
  module = ClassifierModule(config, model)
  signatures = module.get_inference_signatures(
      {"image_bytes": "image_bytes", "image_tensor": "image_tensor", "tf_example": "tf_example"})
  signatures["serving_default"] = signatures["image_bytes"]
  module.model_variables = list(model.variables)  # in the model's order (visualize reads them)
  tf.io.gfile.makedirs(export_dir)
  with _without_keras_traces():
    tf.saved_model.save(module, export_dir, signatures=signatures)
  train_utils.serialize_config(config, export_dir)
  if gin_text:
    with tf.io.gfile.GFile(os.path.join(export_dir, gin_config.OPERATIVE_CONFIG), "w") as f:
      f.write(gin_text)
  if meta is not None:
    with tf.io.gfile.GFile(os.path.join(export_dir, METADATA), "w") as f:
      json.dump(meta, f, indent=2)
  return export_dir


def export_from_run(options: run_options.RunOptions, export_dir: str = "",
                    checkpoint_path: str = "", formats: str = formats_lib.SAVED_MODEL) -> str:
  """`main.py --mode=export`: one of the run's checkpoints as a SavedModel; returns its path.

  Args:
    options: the run's gin_files / gin_bindings (empty gin_files: model_dir/operative_config.gin)
      and model_dir (its checkpoints).
    export_dir: where to write; default <model_dir>/saved_model.
    checkpoint_path: '' or 'latest' (model_dir's newest), 'best' (model_dir/best_ckpt), or a
      checkpoint directory / prefix.
    formats: comma-separated names from export/formats.py (the SavedModel is always written);
      each deploy format goes beside it and its parity with the Keras model into metadata.json.

  Raises:
    run_options.RunError: no configuration or checkpoint, a checkpoint that does not match, an
      unknown format or one the model cannot take (before anything is written), or a format
      whose logits differ from the Keras model's.
  """
  try:
    names = formats_lib.parse_formats(formats)
    run = restore_run(options, checkpoint_path)
    formats_lib.check_model(run.model, names)
    export_dir = export_dir or os.path.join(options.model_dir, DEFAULT_SUBDIR)
    meta = metadata(run)
    deploy = formats_lib.export_deploy(run.model, run.config.task.validation_data, names,
                                       export_dir)
  except formats_lib.FormatError as e:
    raise run_options.RunError(str(e)) from None
  meta.update({"deploy": deploy} if deploy else {})
  export_saved_model(run.model, run.config, export_dir, run.gin_text, meta)
  parity = "".join(f" | {name} max |logit diff| {r['max_abs_logit_diff']:.2g}, top-1 agreement "
                   f"{r['top1_agreement']:.0%}" for name, r in deploy.get("formats", {}).items())
  print(f"export | {describe_checkpoint(run)} -> SavedModel {export_dir} | signatures "
        f"{', '.join(SIGNATURES)}{parity}", flush=True)
  return export_dir
