"""The fused kernel as a TPU run's default, tried shape by shape before it is trusted
(training/fused_check.py).

On the CPU the check runs the interpreted kernel (platform 'cpu') where a TPU run compiles the
Mosaic one: the same layers, twins, comparison, cache and fallback. Failures are injected into
layers/fused_attention.attend, the one call through which every kernel runs.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import official_halonet  # noqa: F401  (selects tf_keras before TensorFlow resolves tf.keras)
import tensorflow as tf

from official_halonet import models
from official_halonet.layers import HaloAttention
from official_halonet.layers import fused_attention
from official_halonet.training import fused_check
from official_halonet.training import runner
import demo

# The tiny model at 32 px: halo layers in stages 2 and 4 and a SASA layer (a centred window) in
# stage 3, three shapes; convolutions elsewhere.
SIZE = 32


@pytest.fixture(name="model", scope="module")
def _model():
  return models.build("tiny", num_classes=10, image_size=SIZE)


@pytest.fixture(name="verdicts", autouse=True)
def _verdicts(tmp_path, monkeypatch):
  """A fresh verdict cache (the kernel modules stay in the shared cache: they depend on the shape
  alone)."""
  monkeypatch.setattr(fused_check, "verdict_dir", lambda: str(tmp_path / "verdicts"))


def _halo_layers(model):
  return [layer for layer in model.submodules
          if type(layer).__name__ in ("HaloAttention", "SASAAttention")]


def _kernel_calls(model, trusted):
  """XlaCallModule ops per halo layer when the model's forward is traced with the kernel trusted
  for the shape_keys `trusted`."""
  with fused_attention.kernel_by_default("cpu", trusted):
    graph = tf.function(model).get_concrete_function(
        tf.TensorSpec([2, SIZE, SIZE, 3], tf.float32)).graph
  calls = [op.name for op in graph.get_operations() if op.type == "XlaCallModule"]
  return {layer.name: sum(layer.name in name for name in calls) for layer in _halo_layers(model)}


def test_each_shape_the_kernel_computes_is_checked_once_and_trusted(model, tmp_path):
  shapes = fused_check.layer_shapes(model)
  halo = _halo_layers(model)
  assert len(halo) == 3 and sorted(names[0] for _, names in shapes.values()) == sorted(
      layer.name for layer in halo)
  lines = []
  verdicts = fused_check.check_model(model, "cpu", tf.distribute.get_strategy(), str(tmp_path),
                                     say=lines.append)
  assert [v.trusted for v in verdicts] == [True, True, True] and not lines
  assert all("float32" in v.shape and "queries in blocks of" in v.shape for v in verdicts)
  assert sum(", centred)" in v.shape for v in verdicts) == 1  # the SASA layer's
  with open(tmp_path / fused_check.VERDICTS, encoding="utf-8") as f:
    written = json.load(f)
  assert written["platform"] == "cpu"
  assert [s["shape"] for s in written["shapes"]] == [v.shape for v in verdicts]
  assert _kernel_calls(model, [v.shape for v in verdicts]) == {layer.name: 1 for layer in halo}


def test_a_failing_or_wrong_shape_keeps_xlas_path_with_one_line(model, monkeypatch):
  """One shape's kernel fails to compile, another's output is off by 5%: both keep XLA's path,
  each named in one line with its cause, the third takes the kernel; the verdicts are cached and
  read back without a run."""
  attend = fused_attention.attend
  first, second, third = sorted(fused_check.layer_shapes(model))

  def broken(q, kv_map, tables, core, platform):
    key = fused_attention.shape_key(core, q.dtype)
    if key == first:
      raise tf.errors.InvalidArgumentError(None, None, "Mosaic failed to compile\nmore detail")
    out = attend(q, kv_map, tables, core, platform)
    return out * 1.05 if key == second else out

  monkeypatch.setattr(fused_attention, "attend", broken)
  lines = []
  verdicts = fused_check.check_model(model, "cpu", tf.distribute.get_strategy(), say=lines.append)
  by_shape = {v.shape: v for v in verdicts}
  assert not by_shape[first].trusted and not by_shape[second].trusted and by_shape[third].trusted
  assert by_shape[first].cause == "the kernel failed: Mosaic failed to compile"
  assert by_shape[second].cause.startswith("output differs from XLA's path by ")
  assert len(lines) == 2 and all("\n" not in line for line in lines)
  assert lines[0].startswith(f"fused attention: {verdicts[0].shape} keeps XLA's path (1 layer(s), "
                             f"first {verdicts[0].layers[0]}): {verdicts[0].cause}")

  monkeypatch.setattr(fused_check, "check_shape", lambda *args: pytest.fail("not cached"))
  again = fused_check.check_model(model, "cpu", tf.distribute.get_strategy(), say=lambda _: None)
  assert [(v.shape, v.trusted, v.cause, v.cached) for v in again] == [
      (v.shape, v.trusted, v.cause, True) for v in verdicts]
  with fused_check.trusted_kernel(model, "cpu", tf.distribute.get_strategy()) as found:
    assert [v.shape for v in found if v.trusted] == [third]
  calls = _kernel_calls(model, [third])
  assert sorted(calls.values()) == [0, 0, 1]
  assert calls[by_shape[third].layers[0]] == 1


def test_each_shape_is_checked_at_every_batch_the_run_takes(model, monkeypatch):
  """The compiler's room for a kernel can depend on the batch (the README's TPU section): a shape
  is trusted only when it passes at the run's train and eval batches per replica, and a verdict
  at other batches is not read back from the cache."""
  first = sorted(fused_check.layer_shapes(model))[0]
  seen = []

  def check_shape(layer, platform, strategy, batch=1):
    key = next(k for k, (l, _) in fused_check.layer_shapes(model).items() if l is layer)
    seen.append((key, batch))
    return "the kernel failed: out of VMEM" if key == first and batch == 8 else ""

  monkeypatch.setattr(fused_check, "check_shape", check_shape)
  verdicts = fused_check.check_model(model, "cpu", tf.distribute.get_strategy(),
                                     say=lambda _: None, batches=[8, 2, 8])
  assert sorted(seen) == sorted((key, b) for key in fused_check.layer_shapes(model) for b in (2, 8))
  assert [(v.shape, v.trusted) for v in verdicts if not v.trusted] == [(first, False)]
  seen.clear()
  again = fused_check.check_model(model, "cpu", tf.distribute.get_strategy(),
                                  say=lambda _: None, batches=[2])
  assert all(v.trusted and not v.cached for v in again) and {b for _, b in seen} == {2}


def test_a_run_checks_its_train_and_eval_batches_per_replica():
  data = lambda batch: type("Data", (), {"global_batch_size": batch})
  config = type("Config", (), {"task": type("Task", (), {"train_data": data(64),
                                                         "validation_data": data(16)})})
  strategy = type("Strategy", (), {"num_replicas_in_sync": 8})
  assert runner._replica_batches(config, "train_and_eval", strategy) == [8, 2]
  assert runner._replica_batches(config, "train", strategy) == [8]
  assert runner._replica_batches(config, "eval", strategy) == [2]


def test_the_bound_passes_rounding_and_refuses_wiring_errors():
  """bfloat16: 16 units of 2^-8 of the largest output (1/8 for gradients); float32 2^-20."""
  want = [np.linspace(-2.0, 2.0, 50), np.linspace(-1.0, 1.0, 50)]
  rounded = [w * (1 + 2.0**-8) for w in want]
  assert fused_check.compare(rounded, want, ["output", "input gradient"], "bfloat16") == ""
  wrong_head = [want[0][::-1], want[1]]
  assert fused_check.compare(wrong_head, want, ["output", "input gradient"], "bfloat16").startswith(
      "output differs from XLA's path by 4, more than 0.0625 of its largest value 2")
  off = [want[0], want[1] * 1.2]
  assert "input gradient differs" in fused_check.compare(off, want, ["o", "input gradient"],
                                                        "bfloat16")
  assert fused_check.compare([want[0] * (1 + 2.0**-19)], want[:1], ["o"], "float32") != ""
  assert fused_check.compare([want[0] * np.nan], want[:1], ["output"], "float32") != ""


def test_forced_and_unset_settings():
  """'tpu' and 'cpu' force the kernel, 'none' XLA's path; unset takes the run's default, only for
  trusted shapes; a layer the kernel does not compute keeps XLA's path unless forced."""
  assert fused_attention.platform_for("none", "k") is None
  assert fused_attention.platform_for("cpu", "k") == "cpu"
  assert fused_attention.platform_for(None, "k") is None  # no default outside a TPU run
  with fused_attention.kernel_by_default("tpu", ["k"]):
    assert fused_attention.platform_for(None, "k") == "tpu"
    assert fused_attention.platform_for(None, "other") is None
    assert fused_attention.platform_for("none", "k") is None
  with fused_attention.kernel_by_default("tpu"):  # tpu_check: every shape
    assert fused_attention.platform_for(None, "other") == "tpu"
  masked = HaloAttention(num_heads=2, key_dim=8, block_size=4, halo_size=1, mask_out_of_image=True)
  assert not masked.kernel_computes and masked.fused_attention is None
  with pytest.raises(ValueError, match="use fused_attention='none'"):
    HaloAttention(num_heads=2, key_dim=8, mask_out_of_image=True, fused_attention="cpu")


def test_a_run_checks_its_shapes_trains_with_the_kernel_and_its_checkpoint_loads_without(
    tmp_path, monkeypatch):
  """runner.run with the CPU strategy standing in for a TPU's (the interpreted kernel): the
  verdicts land in model_dir before training; the checkpoint then evaluates on XLA's path."""
  data_dir = str(tmp_path / "digits")
  demo.make_digits_records(data_dir)
  bindings = [f"experiment.train_input_path = '{data_dir}/train-*'",
              f"experiment.eval_input_path = '{data_dir}/validation-*'",
              "experiment.global_batch_size = 8", "experiment.eval_batch_size = 100",
              "experiment.train_steps = 2", "experiment.steps_per_loop = 2",
              "experiment.checkpoint_interval = 2", "experiment.warmup_epochs = 0"]
  options = runner.RunOptions(gin_files=["demo.gin"], gin_bindings=bindings, mode="train",
                              model_dir=str(tmp_path / "run"), strategy="one_device")
  monkeypatch.setitem(runner.DEFAULT_KERNEL, "one_device", "cpu")
  attend, batches = fused_attention.attend, []
  monkeypatch.setattr(fused_attention, "attend", lambda q, kv_map, tables, core, platform: (
      batches.append((core.batch, platform)) or attend(q, kv_map, tables, core, platform)))
  runner.run(options)
  # The check ran each of the three shapes at the run's train batch per replica, then the train
  # step traced the three layers with the kernel (Model Garden's FLOP count traces one image).
  assert batches[:6] == [(8, "cpu")] * 6 and set(batches) == {(8, "cpu"), (1, "cpu")}, batches
  with open(tmp_path / "run" / fused_check.VERDICTS, encoding="utf-8") as f:
    verdicts = json.load(f)
  assert verdicts["platform"] == "cpu" and len(verdicts["shapes"]) == 3
  assert all(shape["trusted"] and not shape["cause"] for shape in verdicts["shapes"])
  monkeypatch.delitem(runner.DEFAULT_KERNEL, "one_device")
  batches.clear()
  logs = runner.run(runner.RunOptions(gin_files=["demo.gin"], gin_bindings=bindings, mode="eval",
                                      model_dir=str(tmp_path / "run"), strategy="one_device"))
  assert np.isfinite(logs["validation_loss"]) and not batches  # XLA's path


AGREEMENT = """
import official_halonet, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from official_halonet.training import fused_check
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
# Two replicas standing in for two hosts: the second distrusts the second of three shapes.
local = strategy.experimental_distribute_values_from_function(
    lambda context: tf.constant([1.0, 1.0 - context.replica_id_in_sync_group, 1.0]))
print(fused_check.agreed(local, strategy), fused_check.agreed([True, False], strategy),
      fused_check.agreed([], strategy))
"""


def test_hosts_agree_on_each_shape():
  """A shape takes the kernel only where every replica (every host of a pod) trusts it."""
  done = subprocess.run([sys.executable, "-c", AGREEMENT], capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.splitlines()[-1] == "[True, False, True] [True, False] []"


def test_a_shape_another_host_distrusts_keeps_xlas_path(model, monkeypatch):
  monkeypatch.setattr(fused_check, "check_shape", lambda *args: "")  # trusted here
  monkeypatch.setattr(fused_check, "agreed", lambda trusted, strategy: [False, True, True])
  lines = []
  verdicts = fused_check.check_model(model, "cpu", tf.distribute.get_strategy(), say=lines.append)
  assert [v.trusted for v in verdicts] == [False, True, True]
  assert verdicts[0].cause == "another host's check did not trust it" and len(lines) == 1
