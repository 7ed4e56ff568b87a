"""Deploy formats written beside the SavedModel, each checked against the Keras model at export.

    python main.py --mode=export --model_dir=/runs/h0 --formats=saved_model,tflite,onnx,openvino

  saved_model  the SavedModel with serving signatures (export/saved_model.py; always written)
  tflite       model.tflite, LiteRT builtin ops only, batch 1 (export/litert.py)
  onnx         model.onnx, free batch, ONNX Runtime (export/onnx_model.py)
  openvino     openvino/model.xml + .bin from that ONNX model, free batch (export/openvino_model.py)

Every deploy format takes float32 [batch, S, S, 3] images already preprocessed as evaluation
preprocesses them (center crop of `center_crop_fraction`, resize to S with `tf_resize_method`,
ImageNet mean / std normalisation; metadata.json records all three) and gives float32
[batch, num_classes] logits. Preprocessing stays outside the file (the SavedModel's signatures hold
it), so one file serves any image source.

Parity at export time: `parity_images` (a fixed batch: the first records of the run's validation
data, else crops of a photo matplotlib ships) goes through the Keras model and through each
format's own runtime; metadata.json gets the largest absolute logit difference and the fraction of
images whose top-1 class agrees. A difference above `logit_bound` fails the export naming the
format. The bound is float32 rounding's worst case (Higham): 2·n·u·max(1, max |logit|), u = 2^-24,
n = the longest chain of reductions through the network (`reduction_length`); a wrong operator or
weight gives errors of the logits' own size, far above it.
"""
import os
import tempfile
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from official_halonet.export import litert
from official_halonet.export import onnx_model
from official_halonet.export import openvino_model

SAVED_MODEL = "saved_model"
FORMATS = (SAVED_MODEL, "tflite", "onnx", "openvino")
FILES = {"tflite": litert.FILENAME, "onnx": onnx_model.FILENAME,
         "openvino": openvino_model.FILENAME}
UNIT_ROUNDOFF = 2.0 ** -24


class FormatError(ValueError):
  """A format name that does not exist, a model a format cannot take, or a parity failure."""


def parse_formats(text: str, flag: str = "--formats") -> Tuple[str, ...]:
  """'saved_model,tflite' -> ('saved_model', 'tflite'); an unknown name raises FormatError."""
  names = [name.strip() for name in (text or SAVED_MODEL).split(",") if name.strip()]
  unknown = [name for name in names if name not in FORMATS]
  if unknown:
    raise FormatError(f"{flag}: unknown format {unknown[0]!r}; known: {', '.join(FORMATS)}")
  return tuple(dict.fromkeys([SAVED_MODEL] + names))


def check_model(model: tf_keras.Model, formats: Sequence[str]) -> int:
  """The model's image size S; FormatError if a deploy format is asked of a model without one
  (LiteRT's batch-1 file and the ONNX model are built at a fixed S)."""
  size = model.input_shape[1]
  deploy = [name for name in formats if name != SAVED_MODEL]
  if deploy and (size is None or model.input_shape[2] != size):
    raise FormatError(f"format {deploy[0]}: the model's input {list(model.input_shape)} has no "
                      f"fixed square image size; build it with one")
  return size


def logits_function(model: tf_keras.Model):
  """tf.function: float32 [B, S, S, 3] normalised images -> float32 [B, num_classes] logits."""
  return tf.function(lambda images: tf.cast(model(images, training=False), tf.float32))


def reduction_length(model: tf_keras.Model) -> int:
  """Upper bound on the reductions along any path: every kernel's fan-in, every attention
  window's softmax and value sums (2·w²), and a global pooling over the last feature map."""
  n = 1
  for variable in model.trainable_variables:
    if "kernel" in variable.name and len(variable.shape) >= 2:
      n += int(np.prod(variable.shape[:-1]))
  for layer in model.submodules:
    if hasattr(layer, "block_size") and hasattr(layer, "halo_size"):
      n += 2 * (layer.block_size + 2 * layer.halo_size) ** 2
  size = model.input_shape[1] or 1
  return n + (size // 32) ** 2


def logit_bound(model: tf_keras.Model, reference: np.ndarray) -> float:
  """Largest float32-rounding difference of two correct computations of `reference` (see
  module docstring)."""
  scale = max(1.0, float(np.max(np.abs(reference))))
  return 2.0 * reduction_length(model) * UNIT_ROUNDOFF * scale


def _validation_bytes(data_config, count: int) -> Sequence[bytes]:
  """Encoded images of the first `count` validation records ([] when the data is not there)."""
  from official_halonet.data import input_files  # pylint: disable=g-import-not-at-top
  try:
    files = input_files.resolve_input_files(data_config)
  except (FileNotFoundError, ValueError, tf.errors.OpError):
    return []
  image_key, _ = input_files.field_keys(data_config)
  feature = {image_key: tf.io.FixedLenFeature((), tf.string)}
  records = tf.data.TFRecordDataset(files[:1]).take(count)
  return [tf.io.parse_single_example(record, feature)[image_key].numpy() for record in records]


def _photo_crops(count: int) -> Sequence[np.ndarray]:
  """`count` different square crops (float32 0..255 [h, w, 3]) of the photo matplotlib ships."""
  from matplotlib import cbook  # pylint: disable=g-import-not-at-top
  with cbook.get_sample_data("grace_hopper.jpg") as f:
    photo = tf.io.decode_jpeg(f.read(), channels=3).numpy().astype(np.float32)
  side = min(photo.shape[:2])
  crops = []
  for i in range(count):
    size = side * (4 + i % 4) // 8
    top, left = (photo.shape[0] - size) * i // max(count - 1, 1), (i * 37) % (side - size + 1)
    crops.append(photo[top:top + size, left:left + size])
  return crops


def parity_images(data_config, count: int = 8) -> Tuple[np.ndarray, str]:
  """(float32 [count, S, S, 3] eval-preprocessed images, where they came from)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from official_halonet.data import image_parser  # pylint: disable=g-import-not-at-top
  eval_config = dataclasses.replace(data_config, is_training=False, dtype="float32")
  parser = image_parser.ImageParser(eval_config)
  encoded = _validation_bytes(eval_config, count)
  if len(encoded) == count:
    images = [parser(tf.constant(data)) for data in encoded]
    source = f"the first {count} validation records ({eval_config.input_path})"
  else:
    images = [parser.parse_pixels(tf.constant(crop)) for crop in _photo_crops(count)]
    source = f"{count} crops of matplotlib's sample photo grace_hopper.jpg"
  return np.stack([image.numpy() for image in images]).astype(np.float32), source


def _write(name: str, function, size: int, export_dir: str, work_dir: str) -> str:
  """Writes format `name` under export_dir; returns the file's path."""
  path = os.path.join(export_dir, FILES[name])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if name == "tflite":
    with open(path, "wb") as f:
      f.write(litert.convert(function, size))
  elif name == "onnx":
    onnx_model.convert(function, size, path)
  else:  # openvino reads the ONNX model (the one written, or one made for it)
    source = os.path.join(export_dir, FILES["onnx"])
    if not os.path.exists(source):
      source = onnx_model.convert(function, size, os.path.join(work_dir, FILES["onnx"]))
    openvino_model.convert(source, path)
  return path


RUNTIMES = {"tflite": litert.run, "onnx": onnx_model.run, "openvino": openvino_model.run}


def check_parity(name: str, logits: np.ndarray, reference: np.ndarray, bound: float,
                 path: str = "") -> Dict[str, Any]:
  """{max_abs_logit_diff, top1_agreement, bound} of a runtime's logits against the Keras model's;
  FormatError naming the format when the difference exceeds `bound` (or is NaN)."""
  logits = np.asarray(logits, np.float32)
  if logits.shape != reference.shape:
    raise FormatError(f"format {name}: logits of shape {list(logits.shape)}, the Keras model "
                      f"gives {list(reference.shape)} ({path})")
  diff = float(np.max(np.abs(logits - reference)))
  agree = float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))
  if not diff <= bound:
    raise FormatError(f"format {name}: logits differ from the Keras model's by {diff:.3g} "
                      f"(bound {bound:.3g}) on {len(reference)} images ({path})")
  return {"max_abs_logit_diff": diff, "top1_agreement": agree, "bound": bound}


def export_formats(model: tf_keras.Model, formats: Sequence[str], export_dir: str,
                   images: np.ndarray) -> Dict[str, Dict[str, Any]]:
  """Writes every deploy format in `formats` under export_dir and checks it on `images`.

  Returns {format: {file, max_abs_logit_diff, top1_agreement, bound}} for metadata.json.
  Raises FormatError naming the first format that fails to convert, to run, or whose logits
  differ beyond `logit_bound`.
  """
  size = check_model(model, formats)
  function = logits_function(model)
  reference = function(tf.constant(images)).numpy()
  bound = logit_bound(model, reference)
  results = {}
  with tempfile.TemporaryDirectory() as work_dir:
    for name in [n for n in formats if n != SAVED_MODEL]:
      try:
        path = _write(name, function, size, export_dir, work_dir)
        logits = RUNTIMES[name](path, images)
      except Exception as e:  # pylint: disable=broad-except  (each converter raises its own kinds)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FormatError(f"format {name}: {type(e).__name__}: {first[:300]}") from e
      results[name] = {"file": os.path.relpath(path, export_dir),
                       **check_parity(name, logits, reference, bound, path)}
  return results


def export_deploy(model: tf_keras.Model, data_config, formats: Sequence[str],
                  export_dir: str) -> Dict[str, Any]:
  """Every deploy format in `formats`, checked on `parity_images(data_config)`; returns the
  metadata.json 'deploy' entry ({} when only the SavedModel is asked for)."""
  if all(name == SAVED_MODEL for name in formats):
    return {}
  images, source = parity_images(data_config)
  results = export_formats(model, formats, export_dir, images)
  size = check_model(model, formats)
  return {
      "input": f"float32 [batch, {size}, {size}, 3] eval-preprocessed images (tflite: batch 1)",
      "output": f"float32 [batch, {model.output_shape[-1]}] logits",
      "preprocessing": {"center_crop_fraction": data_config.center_crop_fraction,
                        "resize_method": data_config.tf_resize_method,
                        "mean": list(_norm().MEAN_NORM), "stddev": list(_norm().STDDEV_NORM),
                        "scale": "pixels 0..255 before normalisation"},
      "parity_images": source,
      "formats": results,
  }


def _norm():
  from official.vision.ops import preprocess_ops  # pylint: disable=g-import-not-at-top
  return preprocess_ops
