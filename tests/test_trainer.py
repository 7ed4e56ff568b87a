"""The gin-configured trainer: every gin file builds, bad settings fail fast with file and line,
end-to-end training through Model Garden on 2 logical CPU devices, kill -9 resumption, a NaN stop,
and MultiWorkerMirroredStrategy over two processes on loopback agreeing with one worker."""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import official_halonet  # noqa: F401
import tensorflow as tf
import tf_keras

import tolerance

from official.core import base_task
from official.core import config_definitions
from official.core import task_factory
from official.modeling import optimization
from official_halonet.export import saved_model
from official_halonet.kernels import tpu_software
import demo
from official_halonet.training import experiment as experiment_lib
from official_halonet.training import gin_config
from official_halonet.training import loss_guard
from official_halonet.training import optimizer as optimizer_lib
from official_halonet.training import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, "gin")
# Configurations whose model is not built here: their variables (31-87M parameters; H7 also at
# 600×600, i21k with a 21,843-class head) take 10-25 s each to initialise on a 2-core CI machine.
# Their backbones are built at full width in test_models.py (parameter counts, endpoint shapes).
LARGE = {"h5", "h6", "h7", "h7_c1", "h7_c12", "h7_c123", "h4_i21k_pretrain", "h4_i21k_finetune_384",
         "h4_i21k_finetune_512"}
# The gin files whose task model is built here at real width, one per family the task path builds
# differently: the demo, an H model, HaloNet-50 (timm's layout), a SASA ResNet, a conv-halo hybrid,
# the plain ResNet. Every other published model is built at real width in test_models.py
# (parameter counts against the paper, endpoint shapes), from the same HaloNetConfig fields; a
# full-width build costs 13-27 s on a 2-core machine, so building each twice is not repeated here.
# Built at real width and resolution: one of each backbone kind (H family, SASA, detection hybrid,
# ResNet) and the demo; halonet50's layers are h1's with another head rule (test_models counts it).
BUILT = {"demo", "h1", "sasa_resnet26", "resnet50_se_halo_b8", "resnet50"}
PUBLISHED = sorted(os.path.splitext(os.path.basename(p))[0]
                   for p in glob.glob(os.path.join(GIN_DIR, "*.gin")))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("digits"))
  demo.make_digits_records(data_dir)
  return data_dir


def _data_bindings(data_dir):
  return [f"experiment.train_input_path = '{data_dir}/train-*'",
          f"experiment.eval_input_path = '{data_dir}/validation-*'"]


def test_published_configurations_exist():
  expected = {f"h{i}" for i in range(8)} | {"halonet50", "resnet50", "h7_c1", "h7_c12",
                                            "h7_c123", "h4_i21k_pretrain", "h4_i21k_finetune_384",
                                            "h4_i21k_finetune_512", "sasa_resnet26",
                                            "sasa_resnet38", "sasa_resnet50", "demo"}
  assert expected <= set(PUBLISHED)


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_gin_file_parses_and_builds_its_experiment(name):
  bindings = _data_bindings("/tmp/digits") if name == "demo" else []
  config = runner.build_config(runner.RunOptions(gin_files=[f"{name}.gin"],
                                                 gin_bindings=bindings)).config
  spec_model = config.task.model.backbone.halonet.model_id
  assert config.task.model.input_size[0] >= 32
  assert config.trainer.train_steps > 0 and config.trainer.validation_steps > 0
  if name.startswith("h") and name[1].isdigit() and "_" not in name:
    # The paper's recipe: lr 0.1 × 4096 / 256 = 1.6, cosine to lr / 128, 350 epochs.
    cosine = config.trainer.optimizer_config.learning_rate.cosine
    assert cosine.initial_learning_rate == pytest.approx(1.6)
    assert cosine.alpha == pytest.approx(1 / 128)
    assert config.trainer.train_steps == 350 * (1281167 // 4096)
    assert config.task.train_data.randaug_magnitude == official_halonet.models.get_spec(
        spec_model).randaug_magnitude
    assert config.trainer.optimizer_config.optimizer.sgd.nesterov
  if name not in BUILT:
    return
  # Build the task's model at the configuration's resolution and real width.
  model = task_factory.get_task(config.task).build_model()
  assert model.output_shape == (None, config.task.model.num_classes)
  tf_keras.backend.clear_session()



def test_recompute_attention_binding_reaches_the_backbone_config():
  built = [runner.build_config(runner.RunOptions(gin_files=["h1.gin"], gin_bindings=b)).config
           for b in ([], ["experiment.recompute_attention = True"])]
  assert [c.task.model.backbone.halonet.recompute_attention for c in built] == [False, True]
  detection_config = runner.build_config(runner.RunOptions(
      gin_files=[os.path.join(GIN_DIR, "detection", "maskrcnn_r50_halo_b8.gin")],
      gin_bindings=["detection_experiment.recompute_attention = True"])).config
  assert detection_config.task.model.backbone.halonet.recompute_attention

# The paper's table 1: image size and RandAugment magnitude of H0-H7 (the hybrids are H7's).
PAPER_SIZE_AND_MAGNITUDE = {
    "h0": (256, 6), "h1": (256, 8), "h2": (256, 10), "h3": (320, 14), "h4": (384, 17),
    "h5": (448, 19), "h6": (512, 24), "h7": (600, 31), "h7_c1": (600, 31), "h7_c12": (600, 31),
    "h7_c123": (600, 31)}


@pytest.mark.parametrize("name", sorted(PAPER_SIZE_AND_MAGNITUDE))
def test_h_gin_files_take_image_size_and_magnitude_from_the_spec(name):
  config = runner.build_config(runner.RunOptions(gin_files=[f"{name}.gin"])).config
  spec = official_halonet.models.get_spec(config.task.model.backbone.halonet.model_id)
  effective = (config.task.model.input_size[0], config.task.train_data.randaug_magnitude)
  assert effective == (spec.image_size, spec.randaug_magnitude) == PAPER_SIZE_AND_MAGNITUDE[name]
  data = (config.task.train_data.image_size, config.task.validation_data.image_size)
  assert data == (spec.image_size, spec.image_size)
  # An explicit binding still wins over the spec.
  config = runner.build_config(runner.RunOptions(
      gin_files=[f"{name}.gin"], gin_bindings=["experiment.image_size = 224",
                                               "experiment.randaug_magnitude = 3"])).config
  assert (config.task.model.input_size[0], config.task.train_data.randaug_magnitude) == (224, 3)


def test_i21k_finetune_changes_window_and_starts_from_pretraining():
  config = runner.build_config(runner.RunOptions(gin_files=["h4_i21k_finetune_384.gin"])).config
  backbone = config.task.model.backbone.halonet
  assert (backbone.block_size, backbone.halo_size) == (12, 2)
  assert config.task.init_checkpoint_modules == "backbone"
  assert config.task.model.num_classes == 1000
  assert config.trainer.optimizer_config.ema is None


@pytest.mark.parametrize("name", ["h4_i21k_finetune_384", "h4_i21k_finetune_512"])
def test_i21k_finetune_peaks_at_the_papers_learning_rate(name):
  """The paper's fine-tuning rate 0.016 is the rate of the batch-512 run, not a rate per 256."""
  config = runner.build_config(runner.RunOptions(gin_files=[f"{name}.gin"])).config
  assert config.task.train_data.global_batch_size == 512
  optimizer = config.trainer.optimizer_config
  assert optimizer.learning_rate.cosine.initial_learning_rate == pytest.approx(0.016, rel=1e-12)
  schedule = optimization.OptimizerFactory(optimizer).build_learning_rate()
  warmup = optimizer.warmup.linear.warmup_steps
  assert warmup == round(0.5 * (1281167 // 512))
  total = config.trainer.train_steps
  assert total == 8 * (1281167 // 512)
  # The float32 schedule rounds a few times: a tolerance of a few float32 ulps.
  rel = 8 * np.finfo(np.float32).eps
  for step, rate in ((warmup // 2, 0.016 * (warmup // 2) / warmup), (warmup, 0.016),
                     (total, 0.016 / 128)):
    assert float(schedule(step)) == pytest.approx(rate, rel=rel), step


def _expect_run_error(options, *needles):
  start = time.time()
  with pytest.raises((runner.RunError, gin_config.GinError)) as error:
    runner.run(options)
  message = str(error.value)
  for needle in needles:
    assert re.search(needle, message), (needle, message)
  assert time.time() - start < 20, "the check must come before any graph is built"
  return message


def test_missing_gin_file(tmp_path):
  _expect_run_error(runner.RunOptions(gin_files=["h9.gin"], model_dir=str(tmp_path)),
                    r"gin file not found: h9\.gin")


def test_unknown_configurable_in_file_names_file_and_line(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("include 'h0.gin'\n\nexperimnt.epochs = 3\n")
  _expect_run_error(runner.RunOptions(gin_files=[str(bad)], model_dir=str(tmp_path)),
                    r"bad\.gin.*line 3", "experimnt")


def test_unknown_parameter_in_binding_names_the_binding(tmp_path):
  _expect_run_error(
      runner.RunOptions(gin_files=["h0.gin"], gin_bindings=["experiment.epoch = 3"],
                        model_dir=str(tmp_path)),
      r"--gin_bindings\[0\]", "doesn't have a parameter named 'epoch'")


def test_renamed_parameter_names_the_new_name(tmp_path):
  bad = tmp_path / "old.gin"
  bad.write_text("include 'h0.gin'\nexperiment.stochastic_depth_rate = 0.1\n")
  _expect_run_error(runner.RunOptions(gin_files=[str(bad)], model_dir=str(tmp_path)),
                    r"old\.gin:2: experiment\.stochastic_depth_rate is now "
                    r"experiment\.stochastic_depth_drop_rate$")
  for build in (experiment_lib.experiment, experiment_lib.from_recipe):  # Python keywords too
    with pytest.raises(gin_config.GinError, match=r"^experiment\.stochastic_depth_rate is now "
                       r"experiment\.stochastic_depth_drop_rate$"):
      build(stochastic_depth_rate=0.1)


def test_bad_backbone_override_names_where_it_was_bound(tmp_path):
  _expect_run_error(
      runner.RunOptions(gin_files=["h0.gin"], gin_bindings=["experiment.block_size = 0"],
                        model_dir=str(tmp_path)),
      r"--gin_bindings\[0\]: experiment\.block_size: model 'h0': block_size must be a positive")


def test_syntax_error_in_binding(tmp_path):
  _expect_run_error(
      runner.RunOptions(gin_files=["h0.gin"], gin_bindings=["experiment.model_id = 'h0"],
                        model_dir=str(tmp_path)), r"--gin_bindings\[0\]")


def test_missing_include(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("# comment\ninclude 'base/nonexistent.gin'\n")
  _expect_run_error(runner.RunOptions(gin_files=[str(bad)], model_dir=str(tmp_path)),
                    r"bad\.gin:2", "nonexistent")


def test_unknown_model_names_where_it_was_bound(tmp_path):
  bad = tmp_path / "model.gin"
  bad.write_text("include 'h0.gin'\nexperiment.model_id = 'h9'\n")
  _expect_run_error(runner.RunOptions(gin_files=[str(bad)], model_dir=str(tmp_path)),
                    r"model\.gin:2: experiment\.model_id: unknown model 'h9'", "h7")


def test_image_size_the_model_cannot_take(tmp_path):
  _expect_run_error(
      runner.RunOptions(gin_files=["h0.gin"], gin_bindings=["experiment.image_size = 20"],
                        model_dir=str(tmp_path)),
      r"--gin_bindings\[0\]: experiment\.image_size: image_size must be an integer >= 32")


def test_input_pattern_that_matches_nothing(tmp_path):
  # The error names the pattern and where it was bound (here the --gin_bindings entry).
  _expect_run_error(
      runner.RunOptions(gin_files=["h0.gin"], model_dir=str(tmp_path),
                        gin_bindings=[f"experiment.train_input_path = '{tmp_path}/none-*'"]),
      r"--gin_bindings\[0\]: experiment\.train_input_path", "none-")


def test_fused_attention_and_tpu_runs_refused_without_the_pinned_tpu_software(digits, tmp_path,
                                                                            monkeypatch):
  """All before any model exists: the TPU kernel on a CPU strategy; a fused kernel whose modules
  could not be made when a step is first traced (the eval step's, hours in) because the JAX
  installed is not the pinned one; a TPU run whose libtpu is not the one TensorFlow's TPU build
  is pinned to."""
  bindings = _data_bindings(digits) + ["experiment.fused_attention = 'tpu'"]
  _expect_run_error(
      runner.RunOptions(gin_files=["demo.gin"], gin_bindings=bindings, model_dir=str(tmp_path),
                        mode="train_and_eval", strategy="one_device"),
      r"--gin_bindings\[2\]: experiment\.fused_attention: fused_attention='tpu' runs on a TPU only"
      r", and this run's strategy is 'one_device'")
  installed = tpu_software.installed
  monkeypatch.setattr(tpu_software, "installed",
                      lambda package: "0.0.52" if package == "libtpu" else
                      "0.12.0" if package == "jax" else installed(package))
  _expect_run_error(
      runner.RunOptions(gin_files=["demo.gin"], model_dir=str(tmp_path), mode="train",
                        strategy="one_device",
                        gin_bindings=bindings[:2] + ["experiment.fused_attention = 'cpu'"]),
      r"experiment\.fused_attention: fused_attention='cpu' makes its kernels when each step is "
      r"first traced, but the fused attention kernels cannot be made: jax 0\.12\.0 is installed, "
      r"but this project runs TPUs with jax 0\.6\.0")
  _expect_run_error(
      runner.RunOptions(gin_files=["demo.gin"], model_dir=str(tmp_path), mode="train",
                        strategy="tpu", tpu="local", gin_bindings=bindings[:2]),
      r"libtpu 0\.0\.52 is installed, but this project runs TPUs with libtpu 0\.0\.14 "
      r"\(requirements\.txt; docs/tpu_software\.md\)")
  assert not glob.glob(str(tmp_path / "ckpt-*"))


def _main(args, env=None, timeout=600, **kwargs):
  environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py")] + args, cwd=ROOT,
                        env=environment, capture_output=True, text=True, timeout=timeout,
                        **kwargs)


def _gin_args(bindings):
  return ["--gin_file=demo.gin"] + [f"--gin_bindings={b}" for b in bindings]


def test_batch_not_divisible_by_replicas_fails_before_building(digits, tmp_path):
  result = _main(_gin_args(_data_bindings(digits) + ["experiment.global_batch_size = 63"]) +
                 ["--model_dir", str(tmp_path), "--num_cpu_devices=2"], timeout=120)
  assert result.returncode == 2
  assert re.search(r"--gin_bindings\[2\]: experiment\.global_batch_size: global_batch_size=63 "
                   r"is not divisible by the 2 replicas", result.stderr), result.stderr[-2000:]
  assert not glob.glob(str(tmp_path / "ckpt-*"))


def test_a_bad_gin_binding_writes_no_model_dir(tmp_path):
  model_dir = tmp_path / "run"
  result = _main(_gin_args(["experiment.epoch = 3"]) + [f"--model_dir={model_dir}"], timeout=120)
  assert result.returncode == 2 and "doesn't have a parameter named 'epoch'" in result.stderr
  assert not model_dir.exists()


# The first Model Garden run: a registered recipe with the image size set once, in
# task.model.input_size (H1 narrowed to train 2 steps in seconds).
MODEL_GARDEN_YAML = """
task:
  model:
    input_size: [32, 32, 3]
    backbone: {{halonet: {{blocks: [1, 1, 1, 1], base_width: 8, stem_width: 8}}}}
  train_data: {{input_path: '{data}/train-*', global_batch_size: 8, label_offset: 0}}
  validation_data: {{input_path: '{data}/validation-*', label_offset: 0}}
trainer: {{train_steps: 2}}
runtime: {{mixed_precision_dtype: float32}}
"""


def _model_garden_train(tmp_path, yaml, model_dir):
  (tmp_path / "tiny.yaml").write_text(yaml)
  environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(
      [sys.executable, "-m", "official_halonet.train", "--experiment=halonet_h1_imagenet",
       f"--config_file={tmp_path / 'tiny.yaml'}", "--mode=train", f"--model_dir={model_dir}"],
      cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def test_model_garden_input_size_alone_sets_the_image_size(digits, tmp_path):
  model_dir = tmp_path / "run"
  result = _model_garden_train(tmp_path, MODEL_GARDEN_YAML.format(data=digits), model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r"step 2/2 ", result.stdout), result.stdout
  params = (model_dir / "params.yaml").read_text()
  assert params.count("image_size: 32") == 2  # both pipelines follow task.model.input_size
  assert "initial_learning_rate: 0.003125" in params  # 0.1 × 8 / 256: the batch's, not 4096's
  # 2 steps: 1 of warm-up, then cosine to lr / 128 at step 2, as experiment.train_steps = 2 gives.
  assert "| lr 2.441e-05" in result.stdout
  # model_dir did not exist: the log staged until the checks passed moved into it.
  assert "Starts to execute mode: train" in (model_dir / "main.log").read_text()
  staged = os.path.join(tempfile.gettempdir(), "official_halonet",
                        str(model_dir).replace("/", "_") + ".log")
  assert not os.path.exists(staged)


def test_model_garden_disagreeing_sizes_fail_in_one_line_before_model_dir(digits, tmp_path):
  yaml = MODEL_GARDEN_YAML.format(data=digits).replace(
      "label_offset: 0}\ntrainer", "label_offset: 0, image_size: 64}\ntrainer")
  model_dir = tmp_path / "run"
  result = _model_garden_train(tmp_path, yaml, model_dir)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: task.validation_data.image_size = 64 disagrees with task.model.input_size = "
      "[32, 32, 3], which declares it (the pipelines follow it): set task.model.input_size only")
  assert not model_dir.exists()


SHORT_RUN = ["experiment.train_steps = 12", "experiment.warmup_epochs = 0",
             "experiment.steps_per_loop = 3", "experiment.checkpoint_interval = 6",
             "experiment.validation_interval = 12", "experiment.base_learning_rate = 0.2"]


def _losses(stdout):
  return [float(m) for m in re.findall(r"\| loss ([0-9.e+-]+)", stdout)]


def test_train_and_eval_end_to_end_on_two_cpu_devices(digits, tmp_path):
  model_dir = str(tmp_path / "run")
  result = _main(_gin_args(_data_bindings(digits) + SHORT_RUN) +
                 ["--mode=train_and_eval", f"--model_dir={model_dir}", "--strategy=mirrored",
                  "--num_cpu_devices=2"])
  assert result.returncode == 0, result.stderr[-4000:]
  losses = _losses(result.stdout)
  assert len(losses) == 4 and losses[-1] < losses[0], result.stdout
  assert re.search(r"step 12/12 .*img/s \| ETA", result.stdout)
  assert re.search(r"eval \| accuracy [0-9.]+ .*eval_examples 300\.0000", result.stdout)
  assert "MirroredStrategy with 2 replica(s); float32 compute" in result.stdout
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-12")
  operative = open(os.path.join(model_dir, "operative_config.gin")).read()
  assert "experiment.train_steps = 12" in operative and "model_id = 'tiny'" in operative
  assert os.path.exists(os.path.join(model_dir, "params.yaml"))
  assert glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))
  assert glob.glob(os.path.join(model_dir, "validation", "events.out.tfevents.*"))


# The killed run polls for the step-8 checkpoint every 0.2 s and is killed at once; the 32 steps
# (8 checkpoint saves) left after step 8 take seconds, so it never finishes first.
KILL_RUN_STEPS = 40


def test_killed_run_resumes_from_its_last_checkpoint(digits, tmp_path):
  model_dir = str(tmp_path / "run")
  args = _gin_args(_data_bindings(digits) + [
      f"experiment.train_steps = {KILL_RUN_STEPS}", "experiment.steps_per_loop = 2",
      "experiment.checkpoint_interval = 4", "experiment.validation_interval = 1000"]) + [
          "--mode=train", f"--model_dir={model_dir}", "--strategy=one_device"]
  environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py")] + args, cwd=ROOT,
                             env=environment, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and (runner.latest_checkpoint_step(model_dir) or 0) < 8:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = runner.latest_checkpoint_step(model_dir)
  assert killed_at is not None and 8 <= killed_at < KILL_RUN_STEPS, killed_at
  # What a kill at a worse moment leaves: a half-written sharded save and a truncated
  # best_ckpt/info.json (Model Garden rewrites it in place).
  os.makedirs(os.path.join(model_dir, f"ckpt-{killed_at + 4}_temp"))
  os.makedirs(os.path.join(model_dir, "best_ckpt"), exist_ok=True)
  open(os.path.join(model_dir, "best_ckpt", "info.json"), "w").close()
  result = _main(args)
  assert result.returncode == 0, result.stderr[-4000:]
  assert not glob.glob(os.path.join(model_dir, "*_temp")), result.stdout
  assert "Removed the unreadable" in result.stdout
  resumed = int(re.search(r"Resuming from the checkpoint at step (\d+)", result.stdout).group(1))
  assert resumed >= killed_at
  first_step = int(re.search(rf"^step (\d+)/{KILL_RUN_STEPS}", result.stdout, re.M).group(1))
  assert first_step == resumed + 2, result.stdout  # continues; does not start again at 0
  assert runner.latest_checkpoint_step(model_dir) == KILL_RUN_STEPS


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
  model_dir = str(tmp_path / "run")
  # A learning rate of 1e12 sends the weights to inf within the first steps.
  result = _main(_gin_args(_data_bindings(digits) + [
      "experiment.train_steps = 20", "experiment.steps_per_loop = 2",
      "experiment.checkpoint_interval = 2", "experiment.warmup_epochs = 0",
      "experiment.base_learning_rate = 1e12"]) +
                 ["--mode=train", f"--model_dir={model_dir}", "--strategy=one_device"])
  assert result.returncode == 2
  assert "training stopped" in result.stderr and "last good checkpoint" in result.stderr
  assert "the training loss at step" in result.stderr  # loss_guard's error, caught by its type
  last = runner.latest_checkpoint_step(model_dir)
  if last is not None:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    for name in reader.get_variable_to_shape_map():
      if name.startswith(("model/", "backbone/")):
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
          assert np.isfinite(value).all(), f"non-finite {name} in the kept checkpoint"


def _model_garden_optimizer(ema_decay, dtype):
  """The recipe's SGD as Model Garden's task builds it: legacy Keras SGD, in Model Garden's EMA
  wrapper when ema_decay > 0 and Keras' loss-scale wrapper for float16."""
  config = optimizer_lib.sgd_with_warmup({"type": "constant", "constant": {"learning_rate": 0.1}},
                                         warmup_steps=1, momentum=0.9, ema_decay=ema_decay)
  return base_task.Task.create_optimizer(
      config, config_definitions.RuntimeConfig(mixed_precision_dtype=dtype))


@pytest.mark.parametrize("make_optimizer", [
    lambda: _model_garden_optimizer(0.0, "float32"),
    lambda: _model_garden_optimizer(0.5, "float32"),
    lambda: _model_garden_optimizer(0.0, "float16"),
    lambda: tf_keras.optimizers.SGD(0.1, momentum=0.9)],  # Keras' current optimizer: build()
    ids=["sgd", "ema", "loss_scale", "keras_sgd"])
def test_optimizer_weights_are_created_before_the_train_step_is_traced(make_optimizer):
  """A tf.function that creates variables traces twice; runner.run creates the slots first."""
  optimizer = make_optimizer()
  model = tf_keras.Sequential([tf_keras.Input([3]), tf_keras.layers.Dense(2)])
  if hasattr(optimizer, "shadow_copy"):
    optimizer.shadow_copy(model)  # as Model Garden's trainer does for EMA
  runner.create_optimizer_weights(optimizer, model)
  created = len(optimizer.variables())

  @tf.function
  def step():
    optimizer.apply_gradients([(tf.ones_like(v), v) for v in model.trainable_variables])

  step()
  step()
  assert step.experimental_get_tracing_count() == 1
  assert len(optimizer.variables()) == created
  assert created > len(model.trainable_variables)  # a momentum slot for each, and the step count


@pytest.mark.parametrize("loss, step, stops", [
    (float("nan"), 1, True), (float("inf"), 1, True), (2e6, 5, True), (2e6, 4, False),
    (3.5, 5, False)])
def test_loss_guard_stops_on_a_blown_up_loss(loss, step, stops):
  guard = loss_guard.LossGuard(tf.Variable(step, dtype=tf.int64), loss_upper_bound=1e6,
                               begin_step=5)
  if not stops:
    guard({"training_loss": tf.constant(loss)})
    return
  with pytest.raises(loss_guard.LossBlowupError) as error:
    guard({"training_loss": tf.constant(loss)})
  assert (error.value.step, error.value.bound) == (step, 1e6)
  assert error.value.loss == loss or (np.isnan(loss) and np.isnan(error.value.loss))


def _copy_with_bad_label(source_dir, target_dir, split, records, label):
  """Copies the digits shards; `records` (indices) of the first `split` shard get `label`."""
  shutil.copytree(source_dir, target_dir)
  path = sorted(glob.glob(os.path.join(target_dir, f"{split}-*")))[0]
  serialized = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  for record in records:
    example = tf.train.Example.FromString(serialized[record])
    example.features.feature["image/class/label"].int64_list.value[:] = [label]
    serialized[record] = example.SerializeToString()
  with tf.io.TFRecordWriter(path) as writer:
    for item in serialized:
      writer.write(item)
  return path


def _short_error(result, *needles):
  """main.py printed one `error:` line (plus at most two TensorFlow C++ lines) and exited 2."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(lines) <= 3, result.stderr[-3000:]
  error = [line for line in lines if line.startswith("error: bad data: ")]
  assert len(error) == 1, result.stderr
  for needle in needles:
    assert re.search(needle, error[0]), (needle, error[0])


def test_bad_eval_label_stops_before_the_first_training_step(digits, tmp_path):
  data_dir = str(tmp_path / "data")
  shard = _copy_with_bad_label(digits, data_dir, "validation", records=[3], label=11)
  model_dir = tmp_path / "run"
  result = _main(_gin_args(_data_bindings(data_dir) + SHORT_RUN) +
                 [f"--model_dir={model_dir}", "--num_cpu_devices=2"], timeout=300)
  _short_error(result, re.escape(f"{shard}: record 3: label 11 outside [0, 10)"))
  assert not glob.glob(str(model_dir / "ckpt-*"))
  assert "1 data problem(s)" in (model_dir / "main.log").read_text()


def test_bad_training_record_is_one_line_and_the_trace_goes_to_the_log(digits, tmp_path):
  data_dir = str(tmp_path / "data")
  # Every record of one shard: a short run reads only part of the shuffled training data.
  shard = _copy_with_bad_label(digits, data_dir, "train", records=range(300), label=-3)
  model_dir = tmp_path / "run"
  result = _main(_gin_args(_data_bindings(data_dir) + SHORT_RUN) +
                 ["--mode=train", f"--model_dir={model_dir}", "--num_cpu_devices=2"])
  _short_error(result, "Label out of range", re.escape(shard), r"record index \d+", "= -3 ")
  assert "Graph execution error" in (model_dir / "main.log").read_text()


def test_deterministic_mode_gives_identical_weights(digits, tmp_path):
  args = _gin_args(_data_bindings(digits) + [
      "experiment.deterministic = True", "experiment.train_steps = 4",
      "experiment.steps_per_loop = 2", "experiment.checkpoint_interval = 4",
      "experiment.warmup_epochs = 0"]) + ["--mode=train", "--num_cpu_devices=2"]
  weights = []
  for name in ("first", "second"):
    result = _main(args + [f"--model_dir={tmp_path / name}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Deterministic: op determinism on, seed 1" in result.stdout
    weights.append(_final_weights(str(tmp_path / name)))
  assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 20
  for name in weights[0]:
    np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _final_weights(model_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  names = sorted(n for n in reader.get_variable_to_shape_map()
                 if n.startswith(("model/", "backbone/")) and "OPTIMIZER_SLOT" not in n)
  return {n: reader.get_tensor(n) for n in names}


def test_multi_worker_mirrored_two_processes_agree_with_one_worker(digits, tmp_path):
  """Two workers reading identical data with global batch 2B = one worker with batch B."""
  deterministic = _data_bindings(digits) + [
      "experiment.train_steps = 3", "experiment.steps_per_loop = 3",
      "experiment.checkpoint_interval = 3", "experiment.validation_interval = 1000",
      "experiment.warmup_epochs = 0", "experiment.shard_input = False",
      "experiment.random_crop = False", "experiment.shuffle_buffer_size = 1",
      "experiment.label_smoothing = 0.0"]
  single_dir = str(tmp_path / "single")
  single = _main(_gin_args(deterministic + ["experiment.global_batch_size = 16",
                                            "experiment.base_learning_rate = 0.2"]) +
                 ["--mode=train", f"--model_dir={single_dir}", "--strategy=one_device"])
  assert single.returncode == 0, single.stderr[-3000:]

  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  multi_dir = str(tmp_path / "multi")
  # Twice the global batch: the same learning rate per replica needs half the per-256 rate.
  args = _gin_args(deterministic + ["experiment.global_batch_size = 32",
                                    "experiment.base_learning_rate = 0.1"]) + [
      "--mode=train", "--strategy=multi_worker_mirrored"]
  environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  workers, logs = [], []
  for index in range(2):
    tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
    worker_dir = multi_dir if index == 0 else str(tmp_path / f"worker{index}")
    # Output to files, not pipes: a full pipe would stall one worker and with it the collective.
    logs.append((open(tmp_path / f"out{index}.txt", "w+"), open(tmp_path / f"err{index}.txt", "w+")))
    workers.append(subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "main.py")] + args + [f"--model_dir={worker_dir}"],
        cwd=ROOT, env=dict(environment, TF_CONFIG=json.dumps(tf_config)),
        stdout=logs[-1][0], stderr=logs[-1][1]))
  outputs = []
  for worker, (out, err) in zip(workers, logs):
    worker.wait(timeout=600)
    out.seek(0)
    err.seek(0)
    outputs.append((out.read(), err.read()))
    assert worker.returncode == 0, outputs[-1][1][-3000:]
  assert re.search(r"step 3/3", outputs[0][0])
  assert "CollectiveAllReduceStrategy with 2 replica(s)" in outputs[0][0]  # = MWMS
  want, got = _final_weights(single_dir), _final_weights(multi_dir)
  assert want.keys() == got.keys() and len(want) > 20
  # Each worker computes the single worker's gradient on the same 16 images, and halving a sum of
  # two equal floats is exact: the runs differ only by the rounding order of each process's
  # reductions. Bound it by the worst case over the forward chain plus the longest backward sum
  # (the stem kernel's gradient, over 16 images x (32/2)^2 positions).
  config, _ = saved_model.load_config(runner.RunOptions(gin_files=[], model_dir=single_dir))
  n = tolerance.network_chain(saved_model.build_model(config)) + 16 * (32 // 2) ** 2
  for name in want:
    tolerance.assert_close(got[name], want[name], n, bound=tolerance.worst_case, err_msg=name)


DETECTION = sorted(p for p in glob.glob(os.path.join(GIN_DIR, "detection", "*.gin"))
                   if os.path.basename(p) != "coco.gin")  # coco.gin: the shared recipe


@pytest.mark.parametrize("path", DETECTION, ids=os.path.basename)
def test_detection_gin_files_go_through_the_same_entry(path):
  """main.py's runner builds Model Garden's Mask R-CNN / RetinaNet experiment from them."""
  built = runner.build_config(runner.RunOptions(gin_files=[path]))
  config = built.config
  assert config.task.model.backbone.type == "halonet"
  assert config.trainer.train_steps == 67500
  with pytest.raises(runner.RunError, match=r"detection_experiment\.train_input_path"):
    runner.check_inputs(built, "train")


def test_best_checkpoint_record_is_written_whole_and_an_empty_one_is_survived(tmp_path):
  from official_halonet.checkpoints import run_files
  exporter = run_files.BestCheckpointExporter(str(tmp_path), "accuracy", "higher")
  exporter.export_best_eval_metric({"accuracy": tf.constant(0.5)}, 7)
  with open(tmp_path / "info.json") as f:
    assert json.load(f) == {"accuracy": 0.5, "best_ckpt_global_step": 7.0}
  assert not glob.glob(str(tmp_path / "*.tmp"))
  (tmp_path / "info.json").write_text("")  # what a kill during Model Garden's write leaves
  restarted = run_files.BestCheckpointExporter(str(tmp_path), "accuracy", "higher")
  assert restarted.best_ckpt_logs is None and not (tmp_path / "info.json").exists()
