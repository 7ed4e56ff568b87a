"""Fine-tuning (21k -> 1k recipe): relative-position table interpolation, and a run that starts from
a pretrained checkpoint's backbone (tables resized for another block size) with a zero classifier,
through HaloNetClassificationTask.initialize as Model Garden calls it."""
import os

import numpy as np
import pytest

import official_halonet  # noqa: F401
import tensorflow as tf

from official.core import task_factory
from official_halonet.export import checkpoints
from official_halonet.training import demo
from official_halonet.training import finetune
from official_halonet.training import runner


def _offset_table(window, width=3, seed=0):
  """A [2w-1, width] table; row o + w - 1 for offset o."""
  return np.random.default_rng(seed).normal(size=(2 * window - 1, width)).astype(np.float32)


def _at(table, offset):
  return table[offset + (table.shape[0] - 1) // 2]


@pytest.mark.parametrize("old,new", [(12, 16), (16, 18), (12, 18), (18, 12), (6, 10)])
def test_interpolation_shape_and_fixed_offsets(old, new):
  """b=8,h=2 (w=12) -> b=12,h=2 (w=16) -> b=16,h=1 (w=18), and back down."""
  table = _offset_table(old)
  resized = finetune.interpolate_relative_table(table, 2 * new - 1)
  assert resized.shape == (2 * new - 1, 3) and resized.dtype == table.dtype
  for old_offset, new_offset in ((0, 0), (old - 1, new - 1), (-(old - 1), -(new - 1))):
    np.testing.assert_allclose(_at(resized, new_offset), _at(table, old_offset), rtol=1e-6)


def test_interpolation_keeps_matching_offsets_and_interpolates_between():
  """w=4 -> w=7: (w'-1) = 2 (w-1), so old offset o lands on new offset 2o exactly."""
  table = _offset_table(4)
  resized = finetune.interpolate_relative_table(table, 13)
  for offset in range(-3, 4):
    np.testing.assert_allclose(_at(resized, 2 * offset), _at(table, offset), rtol=1e-6)
  for offset in range(-3, 3):  # odd new offsets: the mean of the two old neighbours
    np.testing.assert_allclose(_at(resized, 2 * offset + 1),
                               (_at(table, offset) + _at(table, offset + 1)) / 2, rtol=1e-5)


def test_interpolation_is_exact_on_a_linear_function_of_the_scaled_offset():
  old, new = 12, 16
  offsets = np.arange(-(old - 1), old)[:, None] / (old - 1)
  table = np.concatenate([offsets * 2.0 + 1.0, -offsets], axis=1)
  resized = finetune.interpolate_relative_table(table, 2 * new - 1)
  expected = np.arange(-(new - 1), new)[:, None] / (new - 1)
  np.testing.assert_allclose(resized, np.concatenate([expected * 2.0 + 1.0, -expected], axis=1),
                             atol=1e-12)
  np.testing.assert_array_equal(finetune.interpolate_relative_table(table, 2 * old - 1), table)


def test_recentring_keeps_every_offset_row():
  table = _offset_table(6)
  grown = finetune.recentre_relative_table(table, 2 * 9 - 1)
  shrunk = finetune.recentre_relative_table(table, 2 * 4 - 1)
  for offset in range(-5, 6):
    np.testing.assert_array_equal(_at(grown, offset), _at(table, offset))
  for offset in range(-3, 4):
    np.testing.assert_array_equal(_at(shrunk, offset), _at(table, offset))
  np.testing.assert_array_equal(_at(grown, 8), _at(table, 5))


def test_interpolation_rejects_an_even_row_count():
  with pytest.raises(ValueError, match="odd"):
    finetune.interpolate_relative_table(_offset_table(4), 8)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A 'pretraining' run: tiny model, 10 classes, block size 4, two steps."""
  root = tmp_path_factory.mktemp("finetune")
  data_dir = str(root / "data")
  demo.make_digits_records(data_dir)
  model_dir = str(root / "pretrain")
  runner.run(runner.RunOptions(
      gin_files=["demo.gin"], model_dir=model_dir, mode="train", strategy="one_device",
      num_gpus=0, gin_bindings=_bindings(data_dir) + ["experiment.train_steps = 2",
                                                      "experiment.base_learning_rate = 1.0"]))
  return dict(root=str(root), data_dir=data_dir, model_dir=model_dir,
              checkpoint=tf.train.latest_checkpoint(model_dir))


def _bindings(data_dir):
  return [f"experiment.train_input_path = '{data_dir}/train-*'",
          f"experiment.eval_input_path = '{data_dir}/validation-*'",
          "experiment.global_batch_size = 16", "experiment.eval_batch_size = 50",
          "experiment.warmup_epochs = 0", "experiment.steps_per_loop = 1",
          "experiment.checkpoint_interval = 1"]


FINETUNE = ["experiment.num_classes = 12", "experiment.block_size = 8",
            "experiment.init_checkpoint_modules = 'backbone'"]


def _expected_backbone(model, checkpoint):
  """{variable name-in-order index: value} the backbone should start from."""
  found = checkpoints.match(model, checkpoint)
  expected = []
  for entry in found.entries:
    if not entry.in_backbone:
      continue
    value = found.value(entry)
    if entry.is_rel_pos_table and value.shape != entry.model_shape:
      value = finetune.interpolate_relative_table(value, entry.model_shape[0])
    expected.append((entry, value))
  return expected


def test_task_initialize_loads_the_backbone_interpolates_tables_and_zeroes_the_head(pretrained):
  config = runner.build_config(runner.RunOptions(
      gin_files=["demo.gin"], gin_bindings=_bindings(pretrained["data_dir"]) + FINETUNE + [
          f"experiment.init_checkpoint = '{pretrained['model_dir']}'"]))
  task = task_factory.get_task(config.task)
  model = task.build_model()
  task.initialize(model)  # what Model Garden's trainer calls for a fresh model_dir
  expected = _expected_backbone(model, pretrained["checkpoint"])
  tables = [e for e, _ in expected if e.is_rel_pos_table and e.checkpoint_shape != e.model_shape]
  assert {(e.checkpoint_shape, e.model_shape) for e in tables} == {((11, 8), (19, 8)),
                                                                   ((11, 32), (19, 32))}
  for entry, value in expected:
    np.testing.assert_allclose(entry.variable.numpy(), value, rtol=1e-6, err_msg=entry.name)
  head = [v for v in model.variables if all(v is not b for b in model.backbone.variables)]
  assert [tuple(v.shape) for v in head] == [(32, 12), (12,)]
  for variable in head:
    assert not np.any(variable.numpy()), variable.name


def test_a_finetune_run_starts_from_the_pretrained_backbone_with_a_zero_head(pretrained):
  """Learning rate 0: the run's checkpoint holds exactly the weights it started from."""
  model_dir = os.path.join(pretrained["root"], "finetune")
  runner.run(runner.RunOptions(
      gin_files=["demo.gin"], model_dir=model_dir, mode="train", strategy="one_device",
      num_gpus=0, gin_bindings=_bindings(pretrained["data_dir"]) + FINETUNE + [
          f"experiment.init_checkpoint = '{pretrained['model_dir']}'",
          "experiment.train_steps = 1", "experiment.base_learning_rate = 0.0"]))
  config = runner.build_config(runner.RunOptions(
      gin_files=[os.path.join(model_dir, "operative_config.gin")]))
  model = task_factory.get_task(config.task).build_model()
  started = checkpoints.match(model, model_dir)
  assert started.path.endswith("ckpt-1") and not started.mismatched()
  values = {id(e.variable): started.value(e) for e in started.entries}
  trainable = {id(v) for v in model.trainable_variables}
  for entry, value in _expected_backbone(model, pretrained["checkpoint"]):
    if id(entry.variable) in trainable:  # batch-norm statistics move in a training step
      np.testing.assert_allclose(values[id(entry.variable)], value, rtol=1e-6,
                                 err_msg=entry.name)
  head = [e for e in started.entries if not e.in_backbone]
  assert [e.model_shape for e in head] == [(32, 12), (12,)]
  for entry in head:
    assert not np.any(values[id(entry.variable)]), entry.name


def test_all_modules_with_another_class_count_is_refused_with_a_hint(pretrained):
  config = runner.build_config(runner.RunOptions(
      gin_files=["demo.gin"], gin_bindings=_bindings(pretrained["data_dir"]) + [
          "experiment.num_classes = 7", "experiment.init_checkpoint_modules = 'all'",
          f"experiment.init_checkpoint = '{pretrained['checkpoint']}'"]))
  task = task_factory.get_task(config.task)
  model = task.build_model()
  before = [v.numpy().copy() for v in model.variables]
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    task.initialize(model)
  message = str(error.value)
  assert "[32, 7]" in message and "[32, 10]" in message and "init_checkpoint_modules" in message
  for old, variable in zip(before, model.variables):  # nothing assigned
    np.testing.assert_array_equal(old, variable.numpy())


def test_another_backbone_shape_is_refused(pretrained):
  model = task_factory.get_task(runner.build_config(runner.RunOptions(
      gin_files=["demo.gin"], gin_bindings=_bindings(pretrained["data_dir"]) + [
          "experiment.final_width = 16"])).task).build_model()
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r"final.*model \[1, 1, \d+, 16\], checkpoint \[1, 1, \d+, 32\]"):
    finetune.restore_pretrained(model, pretrained["model_dir"])


def test_all_modules_with_the_same_classes_copies_the_classifier(pretrained):
  config = runner.build_config(runner.RunOptions(
      gin_files=["demo.gin"], gin_bindings=_bindings(pretrained["data_dir"]) + [
          "experiment.block_size = 8"]))
  model = task_factory.get_task(config.task).build_model()
  summary = finetune.restore_pretrained(model, pretrained["model_dir"], modules="all")
  assert not summary.zeroed and len(summary.resized) == 4 and not summary.used_ema
  reader = tf.train.load_checkpoint(pretrained["checkpoint"])
  np.testing.assert_array_equal(
      model.layers[-1].kernel.numpy(),
      reader.get_tensor("model/layer_with_weights-1/kernel/.ATTRIBUTES/VARIABLE_VALUE"))
