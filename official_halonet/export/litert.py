"""LiteRT (the renamed TensorFlow Lite) flatbuffer of a classifier, builtin ops only.

  convert(function, image_size, float16=False) -> bytes   the .tflite file's content
  run(path, images) -> logits                               through LiteRT's interpreter
  load(path) -> images -> logits                            the same, loaded once

The model is converted from a concrete function with a static batch of 1 (LiteRT's usual mobile
form; `run` feeds a batch one image at a time): float32 [1, S, S, 3] normalised images (the eval
preprocessing, see official_halonet.export.formats) -> float32 [1, num_classes] logits. Only
LiteRT's builtin operators are allowed (no Flex delegate), so a layer that needs a TensorFlow op
LiteRT lacks fails the conversion. `float16=True` stores the weights as float16 (half the file;
the interpreter computes in float32 after dequantising them).
"""
import os
from typing import Callable

import numpy as np
import tensorflow as tf

FILENAME = "model.tflite"


def convert(function: Callable[[tf.Tensor], tf.Tensor], image_size: int,
            float16: bool = False) -> bytes:
  """`function`: a tf.function of float32 [B, S, S, 3] -> [B, num_classes] logits."""
  concrete = function.get_concrete_function(
      tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name="images"))
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if float16:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  return converter.convert()


def _interpreter(path: str):
  """LiteRT's interpreter on every CPU core (its default is fewer)."""
  threads = os.cpu_count() or 1
  try:
    from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
    return interpreter.Interpreter(model_path=path, num_threads=threads)
  except ImportError:  # LiteRT's own package is absent: TensorFlow's copy of the interpreter
    return tf.lite.Interpreter(model_path=path, num_threads=threads)


def load(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """The file ready to run: float32 [B, S, S, 3] -> [B, num_classes], one image per invocation."""
  interpreter = _interpreter(path)
  interpreter.allocate_tensors()
  source = interpreter.get_input_details()[0]["index"]
  target = interpreter.get_output_details()[0]["index"]

  def call(images: np.ndarray) -> np.ndarray:
    logits = []
    for image in np.asarray(images, np.float32):
      interpreter.set_tensor(source, image[None])
      interpreter.invoke()
      logits.append(interpreter.get_tensor(target)[0].copy())
    return np.stack(logits)

  return call


def run(path: str, images: np.ndarray) -> np.ndarray:
  """float32 [B, S, S, 3] -> [B, num_classes] logits, one image per invocation."""
  return load(path)(images)
