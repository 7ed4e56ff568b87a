"""Export: a tiny run (with EMA) trained a few steps, exported as a SavedModel and as TF Hub modules,
then checked in a fresh Python process (every signature agrees, with each other and with the
Keras model on the eval pipeline's images; hub.KerasLayer matches the Keras model, exposes the
weight decay and fine-tunes), through `saved_model_cli run`, and refusing mismatched checkpoints."""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import data_fixtures as fx
import tolerance
import official_halonet  # noqa: F401
import tensorflow as tf
from tensorflow.python.framework import config as tf_framework_config

from official_halonet.checkpoints import match as checkpoints
from official_halonet.export import hub as hub_export
from official_halonet.export import saved_model
import demo
from official_halonet.training import runner

# One xdist worker runs all of this module (make test: --dist loadgroup), so its module-scoped
# fixtures (training runs, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("export")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
EVAL_SHARD = "validation-00000-of-00002"  # one shard: the eval pipeline's order is the file's


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  return env


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 4-step EMA run of the tiny model on the digits, exported and published."""
  root = tmp_path_factory.mktemp("export")
  data_dir = str(root / "data")
  demo.make_digits_records(data_dir)
  model_dir = str(root / "model")
  options = runner.RunOptions(
      gin_files=["demo.gin"], model_dir=model_dir, strategy="one_device", num_gpus=0,
      gin_bindings=[f"experiment.train_input_path = '{data_dir}/train-*'",
                    f"experiment.eval_input_path = '{data_dir}/{EVAL_SHARD}'",
                    "experiment.train_steps = 4", "experiment.global_batch_size = 16",
                    "experiment.eval_examples = 150", "experiment.eval_batch_size = 50",
                    "experiment.steps_per_loop = 2", "experiment.checkpoint_interval = 2",
                    "experiment.validation_interval = 4", "experiment.warmup_epochs = 0",
                    "experiment.ema_decay = 0.5",
                    # The same weights every run, so every comparison below sees the same numbers.
                    "experiment.deterministic = True"])
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    runner.run(options)
    # Export from the run's operative config alone, as `main.py --mode=export --model_dir=...`.
    export_options = runner.RunOptions(gin_files=[], model_dir=model_dir)
    export_dir = saved_model.export_from_run(export_options, formats="saved_model,tflite")
    modules = hub_export.publish_from_run(export_options, str(root / "publish"))
  return dict(root=str(root), data_dir=data_dir, model_dir=model_dir, export_dir=export_dir,
              modules=modules, options=options, printed=printed.getvalue())


@pytest.fixture(scope="module")
def served(run):
  """The run's SavedModel, loaded once for the serving tests below (as a server loads it): its
  signatures keep no state between calls, and each load costs seconds."""
  return tf.saved_model.load(run["export_dir"])


FRESH_PROCESS_CHECK = r'''
import json, sys
import numpy as np
import official_halonet
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras
from official.vision.ops import preprocess_ops
from official_halonet import data
from official_halonet.export import saved_model
from official_halonet.training import runner

export_dir, classifier, feature_vector, model_dir, shard, out, tests_dir = sys.argv[1:]
records = [r.numpy() for r in tf.data.TFRecordDataset(shard).take(8)]
encoded = [tf.io.parse_single_example(r, {"image/encoded": tf.io.FixedLenFeature((), tf.string)})
           ["image/encoded"].numpy() for r in records]
pixels = np.stack([tf.io.decode_image(e, channels=3).numpy() for e in encoded]).astype(np.float32)

loaded = tf.saved_model.load(export_dir)
results = {"signatures": sorted(loaded.signatures.keys())}
for name, inputs in (("serving_default", tf.constant(encoded)), ("image_bytes", tf.constant(encoded)),
                     ("image_tensor", tf.constant(pixels)), ("tf_example", tf.constant(records))):
  outputs = loaded.signatures[name](inputs=inputs)
  results[name] = {k: v.numpy().tolist() for k, v in outputs.items()}

# The Keras model with the same (EMA) weights, on the eval input pipeline's first batch.
restored = saved_model.restore_run(runner.RunOptions(gin_files=[], model_dir=model_dir))
model, config = restored.model, restored.config
images, _ = next(iter(data.build_dataset(config.task.validation_data)))
results["keras_eval_pipeline"] = model(images[:8], training=False).numpy().tolist()

# TF Hub modules: [0, 1] images at the model's size.
# The Keras side normalises with the module's own function, so both sides see the same floats.
def normalise(images):
  return preprocess_ops.normalize_scaled_float_image(
      tf.constant(images), preprocess_ops.MEAN_NORM, preprocess_ops.STDDEV_NORM)
x = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
normalised = normalise(x)
endpoints = model.backbone(normalised, training=False)
results["keras_logits"] = model(normalised, training=False).numpy().tolist()
sys.path.insert(0, tests_dir)
import tolerance
results["forward_chain"] = tolerance.network_chain(model)
results["parameters"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
results["keras_features"] = tf.reduce_mean(endpoints[max(endpoints)], axis=[1, 2]).numpy().tolist()
results["keras_regularization"] = float(tf.add_n(model.losses))
results["keras_backbone_regularization"] = float(tf.add_n(model.backbone.losses))
clf = hub.KerasLayer(classifier)
results["hub_logits"] = clf(x).numpy().tolist()
results["hub_frozen_losses"] = [float(l) for l in clf.losses]  # hub: only trainable layers'
results["hub_classifier_losses"] = [float(l) for l in hub.KerasLayer(classifier, trainable=True).losses]
fv = hub.KerasLayer(feature_vector, trainable=True)
results["hub_features"] = fv(x).numpy().tolist()
results["hub_feature_losses"] = [float(l) for l in fv.losses]

# Gradients through the module equal the Keras backbone's, in inference mode (moving statistics)
# on the 3 images, and in training mode (batch statistics) on 32 images: with fewer, a stage-4
# channel whose 1x1 maps hold a handful of values has a batch variance below BN's epsilon and the
# comparison turns ill-conditioned. The images are fixed, so the check is the same every run.
def gradient_error(images, training):
  with tf.GradientTape() as tape:
    hub_loss = tf.reduce_sum(fv(images, training=training) ** 2)
  hub_grads = tape.gradient(hub_loss, fv.trainable_variables)
  with tf.GradientTape() as tape:
    endpoints = model.backbone(normalise(images), training=training)
    keras_loss = tf.reduce_sum(tf.reduce_mean(endpoints[max(endpoints)], axis=[1, 2]) ** 2)
  keras_grads = tape.gradient(keras_loss, model.backbone.trainable_variables)
  results["gradient_shapes_equal"] = all(
      a.shape == b.shape for a, b in zip(fv.trainable_variables, model.backbone.trainable_variables))
  results["gradient_count"] = [len(hub_grads), len(keras_grads)]
  return max(
      float(tf.reduce_max(tf.abs(tf.convert_to_tensor(a) - tf.convert_to_tensor(b)))
            / (tf.reduce_max(tf.abs(tf.convert_to_tensor(b))) + 1e-12))
      for a, b in zip(hub_grads, keras_grads))
results["gradient_error_inference"] = gradient_error(x, training=False)
x32 = np.random.default_rng(1).random((32, 32, 32, 3)).astype(np.float32)
results["gradient_error_training"] = gradient_error(x32, training=True)

# One fine-tuning step through hub.KerasLayer(trainable=True).
head = tf_keras.Sequential([tf_keras.Input([32, 32, 3]), fv, tf_keras.layers.Dense(3)])
head.compile(tf_keras.optimizers.SGD(0.1),
             tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
before = [v.numpy().copy() for v in fv.trainable_variables]
results["finetune_loss"] = float(head.train_on_batch(x, np.array([0, 1, 2])))
results["hub_trainable"] = len(fv.trainable_variables)
results["hub_changed"] = sum(not np.array_equal(b, v.numpy())
                             for b, v in zip(before, fv.trainable_variables))
results["head_loss_terms"] = len(head.losses)
with open(out, "w") as f:
  json.dump(results, f)
'''


@pytest.fixture(scope="module")
def fresh(run):
  """Everything loaded and called in a new Python process (nothing shared with this one)."""
  out = os.path.join(run["root"], "fresh.json")
  script = os.path.join(run["root"], "fresh_check.py")
  with open(script, "w") as f:
    f.write(FRESH_PROCESS_CHECK)
  result = subprocess.run(
      [PYTHON, script, run["export_dir"], run["modules"]["classifier"],
       run["modules"]["feature_vector"], run["model_dir"],
       os.path.join(run["data_dir"], EVAL_SHARD), out, os.path.dirname(os.path.abspath(__file__))],
      env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  with open(out) as f:
    return json.load(f)


def test_every_signature_gives_the_same_numbers(fresh):
  assert set(saved_model.SIGNATURES) <= set(fresh["signatures"])
  reference = fresh["image_bytes"]
  assert np.asarray(reference["logits"]).shape == (8, 10)
  for name in ("serving_default", "image_tensor", "tf_example"):
    for key in ("logits", "probabilities", "top_k_probabilities"):
      tolerance.assert_close(fresh[name][key], reference[key], fresh["forward_chain"],
                             err_msg=f"{name}/{key}")
    np.testing.assert_array_equal(fresh[name]["top_k_classes"], reference["top_k_classes"])
  probabilities = np.asarray(reference["probabilities"])
  tolerance.assert_close(probabilities.sum(-1), np.ones(8), 10)  # a 10-class sum
  tolerance.assert_close(probabilities, tf.nn.softmax(reference["logits"]).numpy(), 10)
  top = np.asarray(reference["top_k_classes"])
  assert top.shape == (8, 5)
  np.testing.assert_array_equal(top[:, 0], probabilities.argmax(-1))


def test_signatures_match_the_keras_model_on_the_eval_pipeline(fresh):
  tolerance.assert_close(fresh["tf_example"]["logits"], fresh["keras_eval_pipeline"],
                         fresh["forward_chain"])


def test_hub_modules_match_the_keras_model(fresh):
  tolerance.assert_close(fresh["hub_logits"], fresh["keras_logits"], fresh["forward_chain"])
  tolerance.assert_close(fresh["hub_features"], fresh["keras_features"], fresh["forward_chain"])
  assert np.asarray(fresh["hub_features"]).shape == (3, 32)


def test_hub_modules_expose_the_weight_decay(fresh):
  assert fresh["keras_regularization"] > 0
  # Sums of squares over every weight, possibly in another order.
  tolerance.assert_close(sum(fresh["hub_classifier_losses"]), fresh["keras_regularization"],
                         fresh["parameters"])
  tolerance.assert_close(sum(fresh["hub_feature_losses"]), fresh["keras_backbone_regularization"],
                         fresh["parameters"])
  assert fresh["head_loss_terms"] >= 1
  assert sum(fresh["hub_frozen_losses"]) == 0.0  # hub.KerasLayer adds losses only when trainable


def test_gradients_through_hub_keras_layer_equal_the_keras_models(fresh):
  assert fresh["gradient_shapes_equal"] and fresh["gradient_count"][0] == fresh["gradient_count"][1]
  # The two sides run the same float32 ops on the same floats, in a graph and eagerly: they differ
  # only by rounding order. The longest reduction of the backward pass is the stem kernel's
  # gradient, a sum over batch x (image/2)^2 positions; bound the difference by its worst case.
  for key, batch in (("gradient_error_inference", 3), ("gradient_error_training", 32)):
    assert fresh[key] < tolerance.worst_case(batch * (32 // 2) ** 2), key


def test_one_finetuning_step_through_hub_keras_layer_changes_the_weights(fresh):
  assert np.isfinite(fresh["finetune_loss"])
  assert fresh["hub_trainable"] > 30
  assert fresh["hub_changed"] == fresh["hub_trainable"]


def test_saved_model_cli_runs_the_bytes_signature(run, fresh, tmp_path):
  record = next(iter(tf.data.TFRecordDataset(os.path.join(run["data_dir"], EVAL_SHARD))))
  encoded = tf.io.parse_single_example(
      record, {"image/encoded": tf.io.FixedLenFeature((), tf.string)})["image/encoded"].numpy()
  np.save(tmp_path / "image.npy", np.array([encoded]))  # dtype S: no pickle needed
  result = subprocess.run(
      [SAVED_MODEL_CLI, "run", "--dir", run["export_dir"], "--tag_set", "serve",
       "--signature_def", "image_bytes", "--inputs", f"inputs={tmp_path / 'image.npy'}",
       "--outdir", str(tmp_path / "out")],
      env=_env(), capture_output=True, text=True, timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  logits = np.load(tmp_path / "out" / "logits.npy")
  tolerance.assert_close(logits, np.asarray(fresh["image_bytes"]["logits"][:1]),
                         fresh["forward_chain"])
  assert np.load(tmp_path / "out" / "top_k_classes.npy").shape == (1, 5)


def test_export_uses_the_ema_weights(run, served):
  config, _ = saved_model.load_config(runner.RunOptions(gin_files=[], model_dir=run["model_dir"]))
  model = saved_model.build_model(config)
  found = checkpoints.match(model, tf.train.latest_checkpoint(run["model_dir"]))
  assert found.has_ema and saved_model.uses_ema(config)
  pixels = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  exported = served.signatures["image_tensor"](inputs=tf.constant(pixels))["logits"].numpy()
  module = saved_model.ClassifierModule(config, model)  # the exported preprocessing
  logits = {}
  for use_ema in (True, False):
    for entry in found.entries:
      entry.variable.assign(found.value(entry, use_ema))
    logits[use_ema] = module.serve_image_tensor(tf.constant(pixels))["logits"].numpy()
  tolerance.assert_close(exported, logits[True], tolerance.network_chain(model))
  assert np.abs(exported - logits[False]).max() > 1e-3  # 4 steps at decay 0.5: not the raw weights


def test_the_export_holds_signatures_and_weights_but_no_per_layer_traces(run, served):
  assert {"serving_default", "image_bytes", "image_tensor", "tf_example"} <= set(served.signatures)
  assert len(served.model_variables) > 20  # what visualize reads from an export
  # Keras's traces would put every layer's call functions into the SavedModel's object graph.
  graph = open(os.path.join(run["export_dir"], "saved_model.pb"), "rb").read()
  assert b"call_and_return_conditional_losses" not in graph


def test_a_deterministic_run_turns_op_determinism_off_again(run):
  # It is process-wide, and TensorFlow's tf.data rewrites under it broke the RetinaNet input
  # pipeline of a later test in the same process.
  assert "Deterministic: op determinism on" in run["printed"]
  assert not tf_framework_config.is_op_determinism_enabled()


def test_publish_writes_readme_and_metadata(run):
  for kind, path in run["modules"].items():
    with open(os.path.join(path, "metadata.json")) as f:
      meta = json.load(f)
    assert meta["module"] == kind
    assert meta["model_id"] == "tiny" and meta["image_size"] == 32 and meta["num_classes"] == 10
    assert meta["ema_weights"] is True and meta["checkpoint_step"] == 4
    assert meta["block_size"] == 4 and meta["halo_size"] == 1
    assert meta["shape_overrides"] == {}  # the published 'tiny', not resized
    assert meta["training_data"]["input_path"].endswith("train-*")
    assert 0.0 <= meta["top1"] <= 1.0  # evaluated at the exported step (best_ckpt/info.json)
    assert meta["parameters"] > 0
    with open(os.path.join(path, "README.md")) as f:
      readme = f.read()
    assert "tiny" in readme and "[0, 1]" in readme and f"{100 * meta['top1']:.2f}%" in readme
  with open(os.path.join(run["modules"]["classifier"], "metadata.json")) as f:
    classifier = json.load(f)
  with open(os.path.join(run["modules"]["feature_vector"], "metadata.json")) as f:
    features = json.load(f)
  assert classifier["parameters"] == features["parameters"] + 32 * 10 + 10


def test_export_checks_litert_on_the_runs_validation_images(run):
  with open(os.path.join(run["export_dir"], saved_model.METADATA)) as f:
    deploy = json.load(f)["deploy"]
  assert deploy["parity_images"].startswith("the first 8 validation records")
  assert deploy["preprocessing"]["center_crop_fraction"] > 0
  tflite = deploy["formats"]["tflite"]
  assert os.path.exists(os.path.join(run["export_dir"], tflite["file"]))
  assert tflite["top1_agreement"] == 1.0 and tflite["max_abs_logit_diff"] <= tflite["bound"]
  assert "tflite max |logit diff|" in run["printed"]


def test_publish_writes_the_kaggle_models_layout_and_hub_loads_the_variation(run):
  root = os.path.dirname(run["modules"]["classifier"])
  with open(os.path.join(root, hub_export.KAGGLE_MODEL_METADATA)) as f:
    model = json.load(f)
  assert model["slug"] == "official-halonet-tiny" and "tiny" in model["description"]
  for kind, path in run["modules"].items():
    with open(os.path.join(path, hub_export.KAGGLE_INSTANCE_METADATA)) as f:
      instance = json.load(f)
    assert instance["modelSlug"] == model["slug"]
    assert instance["instanceSlug"] == kind.replace("_", "-")
    assert instance["framework"] == "tensorFlow2" and instance["licenseName"] == "Apache 2.0"
    assert "float32 [batch, 32, 32, 3]" in instance["overview"]
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  loaded = hub.load(run["modules"]["classifier"])  # what kagglehub.model_download's path gives
  assert loaded(tf.zeros([2, 32, 32, 3])).shape == (2, 10)


@pytest.mark.parametrize("binding,expected", [
    ("experiment.num_classes = 7", ["[32, 7]", "[32, 10]", "10 classes", "num_classes"]),
    ("experiment.block_size = 2", ["rel_pos_h", "[7, 8]", "[11, 8]", "block_size / halo_size"]),
    ("experiment.model_id = 'sasa_resnet26'", ["not in the checkpoint", "another model_id"]),
])
def test_a_mismatched_checkpoint_is_refused_with_a_message(run, binding, expected):
  options = runner.RunOptions(gin_files=[], model_dir=run["model_dir"], gin_bindings=[binding])
  target = os.path.join(run["root"], "refused")
  with pytest.raises(runner.RunError) as error:
    saved_model.export_from_run(options, export_dir=target)
  message = str(error.value)
  assert "does not match" in message and "nothing was restored" in message
  for text in expected:
    assert text in message, message
  assert not os.path.exists(target)


def test_main_export_refuses_a_mismatch_on_the_command_line(run, tmp_path):
  result = subprocess.run(
      [PYTHON, os.path.join(ROOT, "main.py"), "--mode=export", f"--model_dir={run['model_dir']}",
       f"--export_dir={tmp_path / 'x'}", "--gin_bindings=experiment.num_classes = 7"],
      env=_env(), capture_output=True, text=True, timeout=180, cwd=ROOT)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "error: checkpoint" in result.stderr and "[32, 7]" in result.stderr
  assert not (tmp_path / "x").exists()


def _best_record(run):
  with open(os.path.join(run["model_dir"], "best_ckpt", "info.json")) as f:
    return json.load(f)


def _eval_records(run, count):
  return [r.numpy() for r in tf.data.TFRecordDataset(
      os.path.join(run["data_dir"], EVAL_SHARD)).take(count)]


def test_run_summary_and_export_say_which_checkpoint_and_its_accuracy(run):
  best = _best_record(run)
  assert best["best_ckpt_global_step"] == 4  # the run's only evaluation
  lines = run["printed"].splitlines()
  # One line per evaluation ('eval | accuracy ...'), then the run's summary of its latest checkpoint.
  eval_line, = [l for l in lines if l.startswith("final |")]
  assert eval_line.startswith("final | latest checkpoint, step 4 | accuracy ")
  assert "best_accuracy" not in eval_line
  best_line, = [l for l in lines if l.startswith("best |")]
  assert best_line.startswith(f"best | accuracy {best['accuracy']:.4f} at step 4, kept in ")
  assert "--checkpoint=best" in best_line
  export_line, = [l for l in lines if l.startswith("export |")]
  assert f"(latest, step 4, eval accuracy {best['accuracy']:.4f}, EMA weights)" in export_line
  with open(os.path.join(run["export_dir"], saved_model.METADATA)) as f:
    meta = json.load(f)
  assert meta["checkpoint"] == tf.train.latest_checkpoint(run["model_dir"])
  assert (meta["checkpoint_choice"], meta["checkpoint_step"]) == ("latest", 4)
  assert meta["eval_accuracy"] == best["accuracy"] and meta["ema_weights"] is True
  # Without info.json for the step, the accuracy comes from the run's eval summaries.
  assert checkpoints.evaluated_metric(run["model_dir"], 4, "accuracy", "no_best_ckpt",
                                      "validation") == best["accuracy"]
  assert checkpoints.evaluated_metric(run["model_dir"], 3, "accuracy", "no_best_ckpt",
                                      "validation") is None


def test_export_of_the_best_checkpoint_serves_the_accuracy_it_was_kept_for(run, served, capsys):
  best = _best_record(run)
  export_dir = saved_model.export_from_run(
      runner.RunOptions(gin_files=[], model_dir=run["model_dir"]),
      export_dir=os.path.join(run["root"], "best_export"), checkpoint_path="best")
  printed = capsys.readouterr().out
  assert f"(best, step 4, eval accuracy {best['accuracy']:.4f}, EMA weights)" in printed
  with open(os.path.join(export_dir, saved_model.METADATA)) as f:
    meta = json.load(f)
  assert meta["checkpoint_choice"] == "best" and meta["checkpoint_step"] == 4
  assert os.path.dirname(meta["checkpoint"]) == os.path.join(run["model_dir"], "best_ckpt")
  assert meta["eval_accuracy"] == best["accuracy"]

  # Model Garden wrote best_ckpt while the EMA averages were swapped into the model: exported
  # right, it equals the latest export (same step 4, EMA weights), not the raw weights.
  records = _eval_records(run, 150)  # the run evaluated these 150 (eval_examples)
  best_served = tf.saved_model.load(export_dir).signatures["tf_example"]
  logits = np.concatenate([best_served(inputs=tf.constant(records[i:i + 50]))["logits"].numpy()
                           for i in range(0, 150, 50)])
  latest = served.signatures["tf_example"]
  np.testing.assert_allclose(logits[:50], latest(inputs=tf.constant(records[:50]))["logits"],
                             rtol=1e-5, atol=1e-5)
  labels = np.array([tf.io.parse_single_example(r, {
      "image/class/label": tf.io.FixedLenFeature((), tf.int64)})["image/class/label"].numpy()
                     for r in records])
  correct = int((logits.argmax(-1) == labels).sum())
  # Serving and the Keras eval agree to 1e-4 (test above): only a closer top-2 may flip.
  top2 = np.sort(logits, -1)[:, -2:]
  near_ties = int((top2[:, 1] - top2[:, 0] < 2e-4).sum())
  assert abs(correct - round(best["accuracy"] * 150)) <= near_ties


def test_export_refuses_best_when_the_run_kept_none(run, tmp_path):
  operative = os.path.join(run["model_dir"], "operative_config.gin")
  options = runner.RunOptions(gin_files=[operative], model_dir=str(tmp_path))
  with pytest.raises(runner.RunError, match="--checkpoint=best: no best checkpoint in") as error:
    saved_model.export_from_run(options, export_dir=str(tmp_path / "x"), checkpoint_path="best")
  assert os.path.join(str(tmp_path), "best_ckpt") in str(error.value)
  assert not (tmp_path / "x").exists()
  with pytest.raises(FileNotFoundError, match="keeps no best checkpoint"):
    checkpoints.choose(str(tmp_path), "best", "")


def _serving_images():
  """(name, encoded) pairs and which pairs must serve the same: real photos as GIF, WebP, 1x1."""
  photo = fx.photos(size=(40, 36))[5][1]
  gif = fx.animation([photo, 255 - photo], "GIF")  # two frames: the first is served
  tiny = fx.encode(photo[18:19, 20:21], "JPEG")
  alpha = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 200, np.uint8)], -1)
  named = [("png", fx.encode(photo, "PNG")), ("webp", fx.encode(photo, "WEBP")),
           ("webp_alpha", fx.encode(alpha, "WEBP")), ("gif", gif),
           ("gif_frame_png", fx.encode(fx.first_frame_pixels(gif), "PNG")), ("tiny_jpeg", tiny),
           ("tiny_png", fx.encode(fx.first_frame_pixels(tiny), "PNG"))]
  same = [("webp", "png"), ("webp_alpha", "png"), ("gif", "gif_frame_png"),
          ("tiny_jpeg", "tiny_png")]
  return named, same


def test_serving_decodes_gif_webp_and_1x1_images_as_the_same_pixels(served):
  named, same = _serving_images()
  names = [n for n, _ in named]
  outputs = served.signatures["image_bytes"](inputs=tf.constant([e for _, e in named]))
  logits = outputs["logits"].numpy()
  assert logits.shape == (len(named), 10) and np.isfinite(logits).all()
  for a, b in same:
    np.testing.assert_allclose(logits[names.index(a)], logits[names.index(b)], rtol=1e-5,
                               atol=1e-5, err_msg=f"{a} vs {b}")


@pytest.mark.parametrize("signature", ["image_bytes", "image_tensor", "tf_example"])
def test_serving_an_empty_batch_gives_empty_outputs(served, signature):
  inputs = (tf.zeros([0, 32, 32, 3], tf.float32) if signature == "image_tensor"
            else tf.constant([], tf.string))
  outputs = served.signatures[signature](inputs=inputs)
  shapes = {k: tuple(v.shape) for k, v in outputs.items()}
  assert shapes == {"logits": (0, 10), "probabilities": (0, 10), "top_k_classes": (0, 5),
                    "top_k_probabilities": (0, 5)}
  assert outputs["top_k_classes"].dtype == tf.int32


def _bad_inputs(run, case):
  photo = fx.photos()[0][1]
  good = fx.encode(photo, "JPEG")
  bad = {"truncated_jpeg": good[:300], "not_an_image": b"<html>404</html>", "empty": b"",
         "animated_webp": fx.animation([photo, 255 - photo], "WEBP")}
  if case in bad:
    return "image_bytes", tf.constant([good, good, bad[case], good]), 2
  if case == "nan_pixels":
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 20, 24, 3)).astype(np.float32)
    pixels[1, 5, 7, 2] = np.nan
    return "image_tensor", tf.constant(pixels), 1
  from official_halonet.data import records  # a tf.Example without the image feature
  no_image = records.make_example(good, 1, image_key="image/other").SerializeToString()
  return "tf_example", tf.constant(_eval_records(run, 2) + [no_image]), 2


@pytest.mark.parametrize("case, reason", [
    ("truncated_jpeg", "a JPEG image of 300 bytes that does not decode (truncated or corrupt)"),
    ("not_an_image", "not a JPEG, PNG, GIF, BMP or still WebP image (16 bytes, first bytes "
                     "[60 104 116 109 108 62 52 48])"),
    ("empty", "empty (0 bytes)"),
    ("animated_webp", "an animated WebP, which is not supported"),
    ("nan_pixels", "has NaN or infinite pixel values"),
    ("missing_image", "empty (0 bytes)"),
])
def test_serving_names_the_bad_input_and_why(run, served, case, reason):
  signature, inputs, index = _bad_inputs(run, case)
  serve = served.signatures[signature]
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    serve(inputs=inputs)
  message = error.value.message
  assert f"{signature} input {index} of the batch" in message and reason in message, message
