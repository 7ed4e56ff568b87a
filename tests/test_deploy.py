"""Deploy formats (official_halonet/export/formats.py): LiteRT with builtin ops only, ONNX with a
free batch in ONNX Runtime and OpenVINO, parity with the Keras model, and the refusals.

One tiny model is converted to every format once (module fixture); one model of every op signature
in models.MODELS (models that differ only in sizes share one) is converted to LiteRT at tiny width
(conversion only: it fails when an op needs the Flex delegate)."""
import os

import numpy as np
import pytest

import official_halonet  # noqa: F401
import tensorflow as tf
import tf_keras

from official_halonet import convert_timm
from official_halonet import models
from official_halonet.export import formats
from official_halonet.export import litert
from official_halonet.export import onnx_model
from official_halonet.export import openvino_model
from official_halonet.export import saved_model
from official_halonet.training import runner
import tolerance

TINY = dict(blocks=[1, 1, 1, 1], base_width=8, stem_width=8, num_heads=[2, 2, 2, 2])


def _bound(model, reference):
  """Float32 rounding's worst case over the network's longest reduction chain, at logit scale."""
  scale = max(1.0, float(np.max(np.abs(reference))))
  return tolerance.worst_case(tolerance.network_chain(model, 4)) * scale


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  tf_keras.backend.clear_session()
  model = models.build("tiny", num_classes=5)
  data = convert_timm.experiment_config("tiny", 5).task.validation_data  # no data: photo crops
  images, source = formats.parity_images(data, count=4)
  out = str(tmp_path_factory.mktemp("deploy"))
  results = formats.export_formats(model, formats.FORMATS, out, images)
  return model, images, source, out, results


def test_every_format_gives_the_keras_models_logits(exported):
  model, images, source, out, results = exported
  assert "grace_hopper" in source and images.shape == (4, 64, 64, 3)
  assert np.std(images) > 0.1  # real, normalised pixels
  reference = model(images, training=False).numpy()
  assert sorted(results) == ["onnx", "openvino", "tflite"]
  for name, result in results.items():
    assert os.path.exists(os.path.join(out, result["file"])), name
    assert result["max_abs_logit_diff"] <= _bound(model, reference), name
    assert result["top1_agreement"] == 1.0, name
  logits = litert.run(os.path.join(out, litert.FILENAME), images)
  np.testing.assert_allclose(logits, reference, rtol=0, atol=_bound(model, reference))


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_batch_is_free_in_onnx_runtime_and_openvino(exported, batch):
  model, images, _, out, _ = exported
  batch_images = np.concatenate([images, images])[:batch]
  reference = model(batch_images, training=False).numpy()
  atol = _bound(model, reference)
  np.testing.assert_allclose(onnx_model.run(os.path.join(out, onnx_model.FILENAME), batch_images),
                             reference, rtol=0, atol=atol)
  np.testing.assert_allclose(
      openvino_model.run(os.path.join(out, openvino_model.FILENAME), batch_images),
      reference, rtol=0, atol=atol)


def test_litert_file_holds_builtin_ops_only(exported):
  _, _, _, out, _ = exported
  from ai_edge_litert import interpreter as litert_interpreter
  interpreter = litert_interpreter.Interpreter(model_path=os.path.join(out, litert.FILENAME))
  ops = {op["op_name"] for op in interpreter._get_ops_details()}  # pylint: disable=protected-access
  assert ops and not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
  assert {"BATCH_MATMUL", "SOFTMAX"} & ops or "EXP" in ops  # the attention is in there


def test_a_runtime_that_disagrees_fails_naming_the_format():
  reference = np.array([[1.0, 2.0], [3.0, 0.5]], np.float32)
  ok = formats.check_parity("onnx", reference + 1e-7, reference, bound=1e-5)
  assert ok["top1_agreement"] == 1.0 and ok["max_abs_logit_diff"] < 1e-6
  with pytest.raises(formats.FormatError, match=r"format openvino: logits differ .* by 0\.5"):
    formats.check_parity("openvino", reference + [[0.0, 0.0], [0.0, 0.5]], reference, 1e-5)
  with pytest.raises(formats.FormatError, match="format tflite"):
    formats.check_parity("tflite", reference + np.nan, reference, 1e-5)


def test_unknown_format_and_unsized_model_fail_in_one_line_before_anything_is_written(tmp_path):
  with pytest.raises(formats.FormatError, match=r"--formats: unknown format 'tflit'; known: "):
    formats.parse_formats("saved_model,tflit")
  assert formats.parse_formats("onnx") == ("saved_model", "onnx")
  options = runner.RunOptions(gin_files=[], gin_bindings=[], mode="export",
                              model_dir=str(tmp_path / "run"))
  with pytest.raises(runner.RunError, match="unknown format 'pt'"):
    saved_model.export_from_run(options, str(tmp_path / "out"), formats="onnx,pt")
  assert not os.path.exists(tmp_path / "out")
  unsized = tf_keras.Sequential([tf_keras.Input((None, None, 3)),
                                 tf_keras.layers.GlobalAveragePooling2D()])
  with pytest.raises(formats.FormatError, match="format tflite: the model's input"):
    formats.check_model(unsized, ("saved_model", "tflite"))


# The spec fields that choose which layers a model has; models that agree on them share one
# LiteRT check. The others only size a model (widths, depths, b and h, resolution) or pick among
# elementwise ops every model has (activation, SE / final 1x1 conv present or not).
_LAYER_FIELDS = ("stem", "stem_pool", "padding", "eca", "query_positions", "se_activation")


def _op_signature(spec):
  """(the layer-choosing fields, the set of stage / block kinds)."""
  kinds = {kind for stage in spec.stage_types
           for kind in ((stage,) if isinstance(stage, str) else stage)}
  return repr([getattr(spec, name) for name in _LAYER_FIELDS]), kinds


def _litert_representatives():
  """Models whose layers together cover every model's: one whose kinds of stage include another's
  (same stem and settings) covers it. timm's are checked through their narrow '_mini' rows
  (blocks listed one by one cannot be shrunk)."""
  chosen = []
  order = sorted(models.MODELS, key=lambda n: (
      -len(_op_signature(models.get_spec(n))[1]), not n.endswith("_mini"), n))
  for name in order:
    fields, kinds = _op_signature(models.get_spec(name))
    if not any(fields == f and kinds <= k for _, f, k in chosen):
      chosen.append((name, fields, kinds))
  return sorted(name for name, _, _ in chosen)


@pytest.mark.parametrize("model_id", _litert_representatives())
def test_every_kind_of_model_converts_to_litert_builtin_ops(model_id):
  tf_keras.backend.clear_session()
  narrow = {} if models.get_spec(model_id).lists_blocks else TINY
  model = models.build(model_id, num_classes=3, image_size=32, **narrow)
  assert len(litert.convert(formats.logits_function(model), 32)) > 1000


KERAS3_SCRIPT = r"""
import json, os, sys
assert "TF_USE_LEGACY_KERAS" not in os.environ
import numpy as np
import keras
assert keras.__version__.startswith("3."), keras.__version__
images = np.load(sys.argv[2])
inputs = keras.Input(images.shape[1:])
outputs = keras.layers.TFSMLayer(sys.argv[1], call_endpoint="image_tensor")(inputs)
model = keras.Model(inputs, outputs["logits"])
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(images)))
"""


def test_keras3_loads_the_saved_model_with_tfsmlayer(tmp_path):
  """A fresh Python without TF_USE_LEGACY_KERAS (so Keras 3) wraps the SavedModel's image_tensor
  signature in a Keras 3 model and gets the signature's logits."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  tf_keras.backend.clear_session()
  model = models.build("tiny", num_classes=5)
  config = convert_timm.experiment_config("tiny", 5)
  path = saved_model.export_saved_model(model, config, str(tmp_path / "saved_model"))
  pixels = np.random.RandomState(0).uniform(0, 255, [2, 80, 72, 3]).astype(np.float32)
  expected = tf.saved_model.load(path).signatures["image_tensor"](
      inputs=tf.constant(pixels))["logits"].numpy()
  np.save(tmp_path / "pixels.npy", pixels)
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  subprocess.run([sys.executable, "-c", KERAS3_SCRIPT, path, str(tmp_path / "pixels.npy"),
                  str(tmp_path / "logits.npy")], env=env, check=True, capture_output=True)
  # The same graph and kernels in another process: equal up to float32 rounding (0.0 measured).
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=0,
                             atol=_bound(model, expected))
