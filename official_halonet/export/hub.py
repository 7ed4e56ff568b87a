"""TF Hub modules of a trained run: an image classifier and an image feature vector.

    python main.py --mode=publish --model_dir=/runs/h0 --export_dir=/publish/h0
    layer = hub.KerasLayer('/publish/h0/feature_vector', trainable=True)   # fine-tune

Both follow the TF Hub image-module conventions (TF2 "reusable SavedModel"):

  input    float32 [B, S, S, 3], RGB in [0, 1], S = the model's image size (metadata.json)
  classifier      -> float32 [B, num_classes] logits
  feature_vector  -> float32 [B, F] the globally average-pooled final features (what the
                     classifier's dense layer reads)

The ImageNet mean / std normalisation the model was trained with is inside the module (Model
Garden's `normalize_scaled_float_image` with MEAN_NORM / STDDEV_NORM, identical to the training
pipeline's normalisation of 0..255 pixels). Each module is a SavedModel whose `__call__` takes
`training` (True: batch norm uses batch statistics and updates its moving averages, dropout on),
with `variables`, `trainable_variables` and `regularization_losses` (the run's L2 weight decay as
one zero-argument function) that `hub.KerasLayer(path, trainable=True)` picks up, so
`layer.losses` carries the weight decay while fine-tuning. A `serving_default` signature
({'logits'} / {'feature_vector'}) serves the same function.

`publish` writes <output_dir>/classifier and <output_dir>/feature_vector, each with README.md and
metadata.json (model, parameters, image size, training data, checkpoint, EMA, top-1 when known:
the run's eval accuracy at the exported step (`saved_model.restore_run`), or passed in), and the
Kaggle Models layout around them: <output_dir>/model-metadata.json (the model: owner, title, slug,
description) and in each module's directory model-instance-metadata.json (a variation named
'classifier' / 'feature-vector', framework tensorFlow2, license, input / output description).
"""
import json
import os
from typing import Any, Dict, Optional

import tensorflow as tf
import tf_keras

from official.core import config_definitions as cfg
from official.vision.ops import preprocess_ops
from official_halonet.export import saved_model
from official_halonet.models import overrides as model_overrides
from official_halonet.training import run_options

CLASSIFIER = "classifier"
FEATURE_VECTOR = "feature_vector"
DEFAULT_SUBDIR = "hub"
# Kaggle Models (TF Hub's successor): the files `kaggle models create` / `instances create` and
# kagglehub.model_upload read; the owner is a placeholder to set before uploading.
KAGGLE_MODEL_METADATA = "model-metadata.json"
KAGGLE_INSTANCE_METADATA = "model-instance-metadata.json"
KAGGLE_FRAMEWORK = "tensorFlow2"
KAGGLE_LICENSE = "Apache 2.0"
KAGGLE_OWNER = "INSERT_OWNER_SLUG_HERE"


class _Untracked:
  """Holds the Keras model out of the SavedModel's object graph (only its variables are saved)."""

  def __init__(self, value):
    self.value = value


def _regularization_loss(model: tf_keras.Model) -> Optional[Any]:
  """A zero-argument tf.function: the sum of `model.losses` (its weight regularizers), or None."""
  if not model.losses:
    return None

  @tf.function(input_signature=[])
  def regularization_loss():
    return tf.add_n([tf.cast(loss, tf.float32) for loss in model.losses])

  regularization_loss.get_concrete_function()
  return regularization_loss


def build_module(model: tf_keras.Model, image_size: int, kind: str):
  """A reusable-SavedModel object for hub.KerasLayer: classifier or feature vector of `model`."""
  if kind not in (CLASSIFIER, FEATURE_VECTOR):
    raise ValueError(f"kind must be {CLASSIFIER!r} or {FEATURE_VECTOR!r}, got {kind!r}")
  held = _Untracked(model)
  backbone = model.backbone
  source = model if kind == CLASSIFIER else backbone
  spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)

  @tf.function
  def call(images, training=False):
    images = preprocess_ops.normalize_scaled_float_image(
        tf.cast(images, tf.float32), preprocess_ops.MEAN_NORM, preprocess_ops.STDDEV_NORM)
    if kind == CLASSIFIER:
      return tf.cast(held.value(images, training=training), tf.float32)
    endpoints = held.value.backbone(images, training=training)
    features = endpoints[max(endpoints.keys())]
    return tf.reduce_mean(tf.cast(features, tf.float32), axis=[1, 2])

  for training in (False, True):
    call.get_concrete_function(spec, training=training)
  output = "logits" if kind == CLASSIFIER else FEATURE_VECTOR

  @tf.function(input_signature=[spec])
  def serve(images):
    return {output: call(images, training=False)}

  module = tf.__internal__.tracking.AutoTrackable()
  module.__call__ = call
  module.serve = serve
  module.variables = list(source.variables)
  module.trainable_variables = list(source.trainable_variables)
  loss = _regularization_loss(source)
  module.regularization_losses = [loss] if loss is not None else []
  return module


def save_module(model: tf_keras.Model, image_size: int, kind: str, path: str) -> str:
  module = build_module(model, image_size, kind)
  tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
  return path


def _params(variables) -> int:
  return int(sum(v.shape.num_elements() for v in variables))


def metadata(run: saved_model.RestoredRun, kind: str,
             top1: Optional[float] = None) -> Dict[str, Any]:
  """The metadata.json of one module."""
  config: cfg.ExperimentConfig = run.config
  halonet = config.task.model.backbone.halonet
  spec = run.model.backbone.spec  # the named spec with the config's overrides applied
  train = config.task.train_data
  size = int(config.task.model.input_size[0])
  top1 = run.eval_accuracy if top1 is None else top1
  source = run.model if kind == CLASSIFIER else run.model.backbone
  out = {
      "module": kind,
      "model_id": halonet.model_id,
      "block_size": spec.block_size,
      "halo_size": spec.halo_size,
      "shape_overrides": {name: getattr(halonet, name) for name in model_overrides.SHAPE_OVERRIDES
                          if getattr(halonet, name) is not None},
      "num_classes": int(config.task.model.num_classes),
      "parameters": _params(source.trainable_variables),
      "image_size": size,
      "input": f"float32 [batch, {size}, {size}, 3] RGB in [0, 1]",
      "output": (f"float32 [batch, {config.task.model.num_classes}] logits" if kind == CLASSIFIER
                 else f"float32 [batch, {_feature_width(run.model)}] average-pooled features"),
      "normalization": {"mean": list(preprocess_ops.MEAN_NORM),
                        "stddev": list(preprocess_ops.STDDEV_NORM), "inside_module": True},
      "training_data": {"input_path": train.input_path, "tfds_name": train.tfds_name,
                        "num_classes": int(train.num_classes), "label_offset": train.label_offset,
                        "multilabel": bool(train.is_multilabel)},
      "train_steps": int(config.trainer.train_steps),
      "checkpoint": run.checkpoint, "checkpoint_choice": run.choice,
      "checkpoint_step": run.step, "ema_weights": run.used_ema,
      "top1": top1,
      "tensorflow": tf.__version__,
  }
  return out


def _feature_width(model: tf_keras.Model) -> int:
  outputs = model.backbone.output_specs
  return int(outputs[max(outputs.keys())][-1])


def _readme(meta: Dict[str, Any]) -> str:
  kind = meta["module"]
  title = "image classifier" if kind == CLASSIFIER else "image feature vector"
  top1 = "not measured" if meta["top1"] is None else f"{100 * meta['top1']:.2f}%"
  usage = ("logits = hub.KerasLayer(path)(images)" if kind == CLASSIFIER else
           "model = tf_keras.Sequential([hub.KerasLayer(path, trainable=True),\n"
           "                             tf_keras.layers.Dense(num_classes)])")
  return f"""# {meta['model_id']} {title} (official_halonet)

HaloNet / SASA local self-attention backbone `{meta['model_id']}` as a TF2 TF Hub module.

| | |
|---|---|
| input | {meta['input']} (the module normalises with ImageNet mean / std itself) |
| output | {meta['output']} |
| image size | {meta['image_size']} |
| parameters | {meta['parameters']:,} |
| classes trained on | {meta['num_classes']} |
| block / halo size (halo stages) | {meta['block_size']} / {meta['halo_size']} |
| shape overrides of the named model | {meta['shape_overrides'] or 'none'} |
| training data | {meta['training_data']['input_path'] or meta['training_data']['tfds_name']} |
| training steps | {meta['train_steps']} |
| checkpoint | {meta['checkpoint']} (step {meta['checkpoint_step']}, {'EMA' if meta['ema_weights'] else 'raw'} weights) |
| top-1 | {top1} |

```python
import tensorflow_hub as hub
{usage}
```

`trainable=True` fine-tunes every weight: batch norm then runs in training mode, and the
module's L2 weight decay appears in `layer.losses`. Metadata: metadata.json.
"""


def _slug(text: str) -> str:
  return text.lower().replace("_", "-")


def kaggle_model_metadata(meta: Dict[str, Any], owner: str) -> Dict[str, Any]:
  """model-metadata.json of the Kaggle model (one per published model)."""
  return {
      "ownerSlug": owner, "title": f"official_halonet {meta['model_id']}",
      "slug": _slug(f"official-halonet-{meta['model_id']}"),
      "subtitle": "HaloNet / SASA local self-attention backbone (TensorFlow 2, Model Garden)",
      "isPrivate": True, "description": _readme(meta), "publishTime": "",
      "provenanceSources": meta["training_data"]["input_path"] or "",
  }


def kaggle_instance_metadata(meta: Dict[str, Any], model: Dict[str, Any]) -> Dict[str, Any]:
  """model-instance-metadata.json of one variation (the module's directory)."""
  return {
      "ownerSlug": model["ownerSlug"], "modelSlug": model["slug"],
      "instanceSlug": _slug(meta["module"]), "framework": KAGGLE_FRAMEWORK,
      "overview": f"{meta['model_id']} {meta['module']}: input {meta['input']}, "
                  f"output {meta['output']}",
      "usage": _readme(meta), "licenseName": KAGGLE_LICENSE, "fineTunable": True,
      "trainingData": [meta["training_data"]["input_path"] or ""],
      "modelInstanceType": "Unspecified", "baseModelInstanceId": 0, "externalBaseModelUrl": "",
  }


def _write_json(path: str, value: Dict[str, Any]):
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(value, f, indent=2)


def publish(run: saved_model.RestoredRun, output_dir: str, top1: Optional[float] = None,
            kaggle_owner: str = KAGGLE_OWNER) -> Dict[str, str]:
  """Writes the classifier and feature-vector modules with README.md and metadata.json each, and
  the Kaggle Models layout: <output_dir>/model-metadata.json and, in each module's directory (one
  variation each), model-instance-metadata.json."""
  size = int(run.config.task.model.input_size[0])
  written = {}
  for kind in (CLASSIFIER, FEATURE_VECTOR):
    path = os.path.join(output_dir, kind)
    save_module(run.model, size, kind, path)
    meta = metadata(run, kind, top1)
    _write_json(os.path.join(path, "metadata.json"), meta)
    with tf.io.gfile.GFile(os.path.join(path, "README.md"), "w") as f:
      f.write(_readme(meta))
    model = kaggle_model_metadata(meta, kaggle_owner)
    _write_json(os.path.join(path, KAGGLE_INSTANCE_METADATA), kaggle_instance_metadata(meta, model))
    written[kind] = path
  _write_json(os.path.join(output_dir, KAGGLE_MODEL_METADATA), model)
  return written


def publish_from_run(options: run_options.RunOptions, output_dir: str = "",
                     top1: Optional[float] = None, checkpoint_path: str = "") -> Dict[str, str]:
  """The run's latest checkpoint (EMA weights when it used EMA) as both TF Hub modules."""
  run = saved_model.restore_run(options, checkpoint_path)
  output_dir = output_dir or os.path.join(options.model_dir, DEFAULT_SUBDIR)
  written = publish(run, output_dir, top1)
  print(f"publish | {saved_model.describe_checkpoint(run)} -> TF Hub modules "
        f"{', '.join(written.values())}", flush=True)
  return written
