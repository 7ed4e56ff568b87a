"""ONNX model of a classifier (tf2onnx), run by ONNX Runtime.

  convert(function, image_size, path)   writes the .onnx file
  run(path, images) -> logits            ONNX Runtime, CPU

Input 'images' float32 [batch, S, S, 3] normalised images with a free batch dimension, output
'logits' float32 [batch, num_classes]; opset `OPSET`. The same file is what OpenVINO converts
(official_halonet.export.openvino_model).

tf2onnx's graph optimizers run except its einsum optimizer, which replaces each Einsum node by
MatMul / Transpose / Reshape nodes: with a free batch those Reshape nodes have two inferred dims,
which OpenVINO refuses ("Output pattern dim[0] has invalid bounds", H1), and its search over letter
orders took half of a tiny model's conversion (88 of 177 s). The attention's einsums stay ONNX
Einsum nodes, which ONNX Runtime and OpenVINO both run.
"""
from typing import Callable

import numpy as np
import tensorflow as tf

FILENAME = "model.onnx"
OPSET = 17
INPUT, OUTPUT = "images", "logits"
SKIPPED_OPTIMIZERS = ("einsum_optimizer",)


def convert(function: Callable[[tf.Tensor], tf.Tensor], image_size: int, path: str) -> str:
  """`function`: a tf.function of float32 [B, S, S, 3] -> [B, num_classes] logits."""
  import tf2onnx  # pylint: disable=g-import-not-at-top
  from tf2onnx import optimizer  # pylint: disable=g-import-not-at-top
  concrete = function.get_concrete_function(
      tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT))
  inputs = [t.name for t in concrete.inputs if t.dtype != tf.resource]
  outputs = [t.name for t in concrete.outputs]
  frozen = tf2onnx.tf_loader.from_function(concrete, inputs, outputs)
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(frozen, name="")
    onnx_graph = tf2onnx.tfonnx.process_tf_graph(
        graph, opset=OPSET, input_names=inputs, output_names=outputs,
        tensors_to_rename={inputs[0]: INPUT, outputs[0]: OUTPUT})
    everything = optimizer._get_optimizers()  # pylint: disable=protected-access
    passes = {name: factory for name, factory in everything.items()
              if name not in SKIPPED_OPTIMIZERS}
    # catch_errors=False: no deep copy of the graph before every pass (a failing pass raises).
    onnx_graph = optimizer.optimize_graph(onnx_graph, catch_errors=False, optimizers=passes)
    tf2onnx.utils.save_protobuf(path, onnx_graph.make_model("official_halonet classifier"))
  return path


def run(path: str, images: np.ndarray) -> np.ndarray:
  """float32 [B, S, S, 3] -> [B, num_classes] logits, one batch."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  return session.run(None, {INPUT: np.asarray(images, np.float32)})[0]
