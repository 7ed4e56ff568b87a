"""timm's HaloNets imported exactly (official_halonet.models.timm_weights, convert_timm).

The fixtures in tests/fixtures/timm were written by tools/timm_fixtures.py with PyTorch and timm
(reduced-width '<name>_mini' versions of the five architectures, random weights with non-trivial
BN statistics, three real photos preprocessed as timm does): the safetensors state dicts, timm's
float32 and float64 logits and timm's own float32 rounding error. No PyTorch is needed here.
"""
import dataclasses
import glob
import json
import math
import os

import numpy as np
import pytest

import official_halonet  # noqa: F401
import tensorflow as tf
import tf_keras
from safetensors.numpy import load_file, save_file

from official.core import task_factory
from official_halonet import convert_timm
from official_halonet.checkpoints import restore
from official_halonet.data import image_parser
from official_halonet import models
from official_halonet.export import hub
from official_halonet.export import saved_model as export
from official_halonet.layers import HaloAttention
from official_halonet.layers import relative_position
from official_halonet.models import specs
from official_halonet.training import runner
import console_check
from console_check import LOG_RECORD
import data_fixtures
import tolerance
from tools import timm_parity

# One xdist worker runs all of this module (make test: --dist loadgroup), so its module-scoped
# fixtures (training runs, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("timm_import")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "timm")
MINI = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(FIXTURES, "*_mini.json")))
FULL = ("halonet_h1", "halonet26t", "sehalonet33ts", "halonet50ts", "eca_halonext26ts")
# The bound on float32 logits (max abs); the fixtures must resolve it (checked below).
FLOAT32_BOUND = 1e-4
# float64 / float32 unit roundoff: rounding errors of the same computation scale by this.
ROUNDOFF_RATIO = 2.0**-53 / 2.0**-24


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_run_quietly = console_check.run_quietly


def test_the_console_check_sees_each_log_format():
  for line in ("E1204 17:37:04.393168 140101525375872 resource_reader.py:55] Path not found",
               "I1204 17:36:46.912016 140420259175296 builder_impl.py:836] Assets written to",
               "2026-12-04 17:36:13.036703: E external/local_xla/xla/cuda_platform.cc:51] x",
               "ERROR:root:Path not found: timm/base.gin"):
    assert LOG_RECORD.match(line), line
  assert not LOG_RECORD.match("convert_timm | halonet26t_mini (98,744 parameters, 10 classes)")


def _weights(name):
  return os.path.join(FIXTURES, f"{name}.safetensors")


def _meta(name):
  with open(os.path.join(FIXTURES, f"{name}.json")) as f:
    return json.load(f)


def test_every_architecture_has_a_small_fixture():
  assert MINI == sorted(f"{n}_mini" for n in FULL)
  total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(FIXTURES, "*")))
  assert total < 1.5e6, f"{total} bytes of fixtures"


@pytest.mark.parametrize("name", FULL)
def test_parameter_count_equals_timms(name):
  with open(os.path.join(FIXTURES, "full_width_parameters.json")) as f:
    expected = json.load(f)[name]
  model = models.build(name, num_classes=1000)
  assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == expected


@pytest.mark.parametrize("name", MINI)
def test_float32_logits_and_top5_equal_timms(name):
  meta = _meta(name)
  # The fixture resolves the bound: timm's own float32 logits are within float32_error of the
  # exact (float64) ones, and so are ours at the same magnitude, so with 4× that below the bound a
  # correct conversion passes every time, and the top-5 order is fixed when consecutive logits of
  # the top 6 are more than twice the bound apart.
  assert 4 * meta["float32_error"] <= FLOAT32_BOUND
  top6 = -np.sort(-np.asarray(meta["logits"]), axis=1)[:, :6]
  assert np.min(top6[:, :-1] - top6[:, 1:]) > 2 * FLOAT32_BOUND
  result = timm_parity.compare(FIXTURES, name)
  assert result["params"] == meta["parameters"]
  assert result["max_abs_diff"] <= FLOAT32_BOUND, result["max_abs_diff"]
  assert result["top5_equal"]


@pytest.mark.parametrize("name", MINI)
def test_float64_logits_equal_timms_float64_logits(name):
  """The conversion is exact: in float64 only float64 rounding separates the two models.

  Rounding error scales with the unit roundoff, so timm's measured float32 error times 2^-29 is
  the float64 error to expect of either implementation; 100× that allows for the two summing in
  different orders. A wrong row, layout or epsilon would differ by 1e-3 or more.
  """
  meta, images = timm_parity.load_fixture(FIXTURES, name)
  policy = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy("float64")
  try:
    model = models.from_timm(name, _weights(name))
    logits = model(images.astype(np.float64), training=False).numpy()
  finally:
    tf_keras.mixed_precision.set_global_policy(policy)
  assert logits.dtype == np.float64
  bound = 100 * meta["float32_error"] * ROUNDOFF_RATIO
  np.testing.assert_allclose(logits, meta["logits_float64"], rtol=0, atol=bound)


# -- timm's strided query positions -------------------------------------------------------------


def _timm_style_rows(block, halo, stride):
  """The table row timm's relative-to-absolute trick reads for (query i', window key a), found by
  running that trick on a table whose row r holds r: logits of bq queries against 2w - 1 rows,
  padded by one column, flattened, padded, reshaped to bq + 1 rows of 2w - 1, cut to the last w."""
  window = block + 2 * halo
  bq, rows = block // stride, 2 * window - 1
  x = np.tile(np.arange(rows, dtype=np.int64), (bq, 1))  # "logit" of row r is r
  x = np.pad(x, [(0, 0), (0, 1)]).reshape(-1)
  x = np.pad(x, [(0, rows - bq)]).reshape(bq + 1, rows)
  return x[:bq, window - 1:]


@pytest.mark.parametrize("block,halo,stride", [(8, 3, 1), (8, 3, 2), (8, 2, 2), (4, 1, 2),
                                               (4, 2, 2), (8, 0, 2)])
def test_subsampled_positions_are_timms_indexing_shifted_by_the_halo(block, halo, stride):
  timm_rows = _timm_style_rows(block, halo, stride)
  ours = relative_position.window_index(block, halo, stride, subsampled=True)
  np.testing.assert_array_equal(ours + halo, timm_rows)  # the converter's row shift
  if stride > 1:  # the default (input positions) is another indexing
    assert not np.array_equal(relative_position.window_index(block, halo, stride), ours)


def _layer_pair(strides, seed=3):
  x = tf.random.stateless_normal([2, 16, 16, 8], seed=[seed, 1])
  outputs = []
  for positions in ("input", "subsampled"):
    tf_keras.utils.set_random_seed(seed)
    layer = HaloAttention(num_heads=2, key_dim=8, block_size=4, halo_size=1, strides=strides,
                          query_positions=positions)
    outputs.append(layer(x).numpy())
  return outputs, layer


def test_query_positions_change_strided_layers_only():
  (a, b), layer = _layer_pair(strides=2)
  assert a.shape == b.shape == (2, 8, 8, 8)
  assert np.max(np.abs(a - b)) > 1e-3
  (c, d), _ = _layer_pair(strides=1)
  np.testing.assert_array_equal(c, d)
  assert HaloAttention(num_heads=1, key_dim=4).query_positions == "input"
  assert HaloAttention.from_config(layer.get_config()).query_positions == "subsampled"
  assert layer.reachable_offsets() == (-2, 4)  # -(b/s - 1 + h) .. b + h - 1
  with pytest.raises(ValueError, match="query_positions"):
    HaloAttention(num_heads=1, key_dim=4, query_positions="timm")


# -- the converter: outputs and bad input -------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """halonet26t_mini converted by `python -m official_halonet.convert_timm` (checkpoint and
  SavedModel); its console shows the result line and no log record."""
  out = str(tmp_path_factory.mktemp("convert") / "halonet26t_mini")
  console = _run_quietly(["-m", "official_halonet.convert_timm", "--timm_model=halonet26t_mini",
                          f"--weights={_weights('halonet26t_mini')}", f"--output_dir={out}"])
  with open(os.path.join(out, "conversion.json")) as f:
    record = json.load(f)
  return dict(out=out, record=record, console=console)


def test_convert_timm_prints_one_line(converted):
  assert len(converted["console"]) == 1 and converted["console"][0].startswith(
      "convert_timm | halonet26t_mini (98,744 parameters"), converted["console"]


def test_checkpoint_restores_strictly_to_the_same_logits(converted):
  _, images = timm_parity.load_fixture(FIXTURES, "halonet26t_mini")
  config = convert_timm.experiment_config("halonet26t_mini", num_classes=10)
  model = export.build_model(config)
  restore.restore(model, os.path.join(converted["out"], "checkpoint"), use_ema=False)
  reference = models.from_timm("halonet26t_mini", _weights("halonet26t_mini"))
  for got, want in zip(model.variables, reference.variables):
    np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.name)
  # The task builds synchronized BN layers (another kernel for the same formula): float32 rounding.
  want = reference(images, training=False).numpy()
  tolerance.assert_close(model(images, training=False).numpy(), want,
                         tolerance.network_chain(reference, 16))


def test_saved_model_serves_with_timms_eval_preprocessing(converted):
  record = converted["record"]
  assert record["eval_center_crop_fraction"] == 0.95
  assert record["eval_resize_method"] == "bicubic"
  assert record["parameters"] == _meta("halonet26t_mini")["parameters"]
  loaded = tf.saved_model.load(os.path.join(converted["out"], "saved_model"))
  pixels = np.stack([p for _, p in data_fixtures.photos(size=(160, 144))[:2]]).astype(np.float32)
  served = loaded.signatures["image_tensor"](inputs=tf.constant(pixels))
  config = convert_timm.experiment_config("halonet26t_mini", num_classes=10)
  parser = image_parser.ImageParser(config.task.validation_data)
  model = models.from_timm("halonet26t_mini", _weights("halonet26t_mini"))
  want = model(tf.stack([parser.parse_pixels(tf.constant(p)) for p in pixels]), training=False).numpy()
  tolerance.assert_close(served["logits"].numpy(), want, tolerance.network_chain(model, 16))


def _refused(tmp_path, name, weights, *fragments):
  out = tmp_path / "out"
  with pytest.raises(models.TimmWeightsError) as error:
    convert_timm.convert(name, str(weights), str(out))
  message = str(error.value)
  assert "\n" not in message
  for fragment in (str(weights),) + fragments:
    assert fragment in message, message
  assert not out.exists()


def test_weights_of_another_model_are_refused(tmp_path):
  _refused(tmp_path, "eca_halonext26ts_mini", _weights("halonet26t_mini"),
           "'stages.0.0.attn.conv.weight'", "missing")


def test_a_truncated_file_is_refused(tmp_path):
  with open(_weights("halonet26t_mini"), "rb") as f:
    data = f.read()
  path = tmp_path / "model.safetensors"
  path.write_bytes(data[:len(data) // 2])
  _refused(tmp_path, "halonet26t_mini", path, "not a readable safetensors file")


@pytest.mark.parametrize("edit,fragment", [
    ("drop", "'stages.3.1.self_attn.kv.weight' is missing"),
    ("extra", "unexpected tensor 'stages.3.1.self_attn.extra'"),
    ("reshape", "'stages.3.1.self_attn.kv.weight' has shape [32, 64, 1, 1]"),
])
def test_a_missing_unexpected_or_misshaped_tensor_is_refused(tmp_path, edit, fragment):
  state = load_file(_weights("halonet26t_mini"))
  kv = "stages.3.1.self_attn.kv.weight"
  if edit == "drop":
    del state[kv]
  elif edit == "extra":
    state["stages.3.1.self_attn.extra"] = state[kv]
  else:
    state[kv] = np.ascontiguousarray(state[kv][:32])
  path = tmp_path / "model.safetensors"
  save_file(state, str(path))
  _refused(tmp_path, "halonet26t_mini", path, fragment)


def test_unknown_model_missing_file_and_used_output_dir_are_refused(tmp_path):
  with pytest.raises(models.TimmWeightsError, match="'resnet50' is not one of timm's"):
    models.from_timm("resnet50", _weights("halonet26t_mini"))
  _refused(tmp_path, "halonet26t_mini", tmp_path / "absent.safetensors", "no such file")
  used = tmp_path / "used"
  used.mkdir()
  (used / "keep").write_text("x")
  with pytest.raises(models.TimmWeightsError, match="not an empty directory"):
    convert_timm.convert("halonet26t_mini", _weights("halonet26t_mini"), str(used))
  assert os.listdir(used) == ["keep"]


# -- using them: fine-tuning and detection ------------------------------------------------------


@pytest.mark.slow
def test_a_converted_model_fine_tunes_through_the_runner(converted, tmp_path):
  """Zero head, so the loss starts at ln(classes) exactly; a few steps on four photos lower it."""
  data_dir = str(tmp_path / "data")
  items = data_fixtures.photo_items(8, label_offset=0)
  items = [(image, label % 4) for image, label in items]
  for split in ("train", "validation"):
    data_fixtures.write_records(data_dir, split, items, num_shards=1)
  bindings = [
      "experiment.model_id = 'halonet26t_mini'", "experiment.num_classes = 4",
      f"experiment.init_checkpoint = '{converted['out']}/checkpoint'",
      f"experiment.train_input_path = '{data_dir}/train-*'",
      f"experiment.eval_input_path = '{data_dir}/validation-*'",
      "experiment.train_examples = 8", "experiment.eval_examples = 8",
      "experiment.global_batch_size = 8", "experiment.eval_batch_size = 8",
      "experiment.train_steps = 8", "experiment.warmup_epochs = 0",
      "experiment.base_learning_rate = 0.5", "experiment.randaug_magnitude = 0",
      "experiment.random_crop = False", "experiment.random_flip = False",
      "experiment.label_smoothing = 0.0", "experiment.weight_decay = 0.0",
      "experiment.steps_per_loop = 8", "experiment.checkpoint_interval = 8"]
  options = runner.RunOptions(gin_files=["timm/halonet26t.gin"], gin_bindings=bindings,
                              model_dir=str(tmp_path / "run"), strategy="one_device",
                              num_gpus=0)
  config = runner.build_config(options).config
  task = task_factory.get_task(config.task)
  start = task.build_model()
  task.initialize(start)
  converted_model = models.from_timm("halonet26t_mini", _weights("halonet26t_mini"))
  for got, want in zip(start.backbone.variables, converted_model.backbone.variables):
    np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.name)
  logs = runner.run(dataclasses.replace(options, mode="train_and_eval"))
  assert logs["validation_loss"] < math.log(4) - 0.05, logs


@pytest.mark.slow
def test_publish_works_on_a_converted_checkpoint(converted, tmp_path):
  """main.py --mode=publish with the model's gin file and the converter's checkpoint directory;
  the console shows where the log and the modules went, and no log record."""
  output_dir = str(tmp_path / "hub")
  console = _run_quietly([
      "main.py", "--mode=publish", "--gin_file=timm/halonet26t.gin",
      f"--model_dir={os.path.join(converted['out'], 'checkpoint')}", f"--export_dir={output_dir}",
      "--gin_bindings=experiment.model_id = 'halonet26t_mini'",
      "--gin_bindings=experiment.num_classes = 10"])
  assert console[0].startswith("Logging to ") and console[-1].startswith("TF Hub modules written")
  written = {name: os.path.join(output_dir, name) for name in (hub.CLASSIFIER, hub.FEATURE_VECTOR)}
  _, images = timm_parity.load_fixture(FIXTURES, "halonet26t_mini")
  classifier = tf.saved_model.load(written[hub.CLASSIFIER])
  # The module takes [0, 1] images and normalises inside; the fixture's crops are uint8.
  crops = np.load(os.path.join(FIXTURES, _meta("halonet26t_mini")["inputs"]))["crops"]
  got = classifier(tf.constant(crops.astype(np.float32) / 255.0)).numpy()
  reference = models.from_timm("halonet26t_mini", _weights("halonet26t_mini"))
  want = reference(images, training=False).numpy()
  assert np.array_equal(np.argsort(-got, 1)[:, :5], np.argsort(-want, 1)[:, :5])
  tolerance.assert_close(got, want, tolerance.network_chain(reference, 16))


@pytest.mark.parametrize("kind", ["retinanet", "maskrcnn"])
@pytest.mark.parametrize("backbone", ["halonet26t", "sehalonet33ts", "halonet50ts",
                                      "eca_halonext26ts"])
def test_detection_configurations_take_each_timm_backbone(kind, backbone):
  config = runner.build_config(runner.RunOptions(
      gin_files=[f"timm/{kind}.gin"],
      gin_bindings=[f"detection_experiment.backbone = '{backbone}'",
                    f"detection_experiment.init_checkpoint = '/models/{backbone}/checkpoint'",
                    "detection_experiment.annotation_file = '/coco/instances_val.json'"])).config
  assert config.task.model.backbone.halonet.model_id == backbone
  assert config.task.model.norm_activation.norm_epsilon == specs.get_spec(backbone).norm_epsilon
  assert config.task.init_checkpoint_modules == "backbone"
