"""OpenVINO IR (model.xml + model.bin) converted from the ONNX model, run by OpenVINO on CPU.

  convert(onnx_path, path)                 writes the IR, float32 weights
  run(path, images, precision='f32')        compiled for the CPU; 'bf16' sets OpenVINO's
                                           INFERENCE_PRECISION_HINT (faster on CPUs with
                                           AMX / AVX-512 BF16; see README "Deploy" for its error)

Input float32 [batch, S, S, 3] normalised images (free batch dimension), output float32
[batch, num_classes] logits.
"""
import numpy as np

FILENAME = "openvino/model.xml"
PRECISIONS = ("f32", "bf16")


def convert(onnx_path: str, path: str) -> str:
  import openvino  # pylint: disable=g-import-not-at-top
  # compress_to_fp16=False: OpenVINO's default would store the weights as float16.
  openvino.save_model(openvino.convert_model(onnx_path), path, compress_to_fp16=False)
  return path


def compile_model(path: str, precision: str = "f32"):
  """The IR compiled for the CPU at `precision` ('f32' or 'bf16')."""
  import openvino  # pylint: disable=g-import-not-at-top
  if precision not in PRECISIONS:
    raise ValueError(f"OpenVINO precision must be one of {PRECISIONS}, got {precision!r}")
  return openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": precision})


def run(path: str, images: np.ndarray, precision: str = "f32") -> np.ndarray:
  """float32 [B, S, S, 3] -> [B, num_classes] logits, one batch."""
  return np.asarray(compile_model(path, precision)(np.asarray(images, np.float32))[0])
