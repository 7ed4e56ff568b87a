"""Fine-tuning (21k -> 1k recipe): relative-position table interpolation, and a run that starts from
a pretrained checkpoint's backbone (tables resized for another block size) with a zero classifier,
through HaloNetClassificationTask.initialize as Model Garden calls it."""
import glob
import os

import numpy as np
import pytest

import official_halonet  # noqa: F401
import tensorflow as tf

from official.core import task_factory
from official_halonet.checkpoints import match as checkpoints
from official_halonet.checkpoints import restore
from official_halonet.layers import HaloAttention
from official_halonet.layers import SASAAttention
from official_halonet.layers import relative_position
import demo
from official_halonet.layers import table_resize
from official_halonet.training import runner

# One xdist worker runs all of this module (make test: --dist loadgroup), so its module-scoped
# fixtures (training runs, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("finetune")

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


def _offset_table(window, width=3, seed=0):
  """A [2w-1, width] table; row o + w - 1 for offset o."""
  return np.random.default_rng(seed).normal(size=(2 * window - 1, width)).astype(np.float32)


def _at(table, offset):
  return table[offset + (table.shape[0] - 1) // 2]


def _layer(block, halo, strides=1, window="block", dtype="float32"):
  return HaloAttention(num_heads=2, key_dim=8, block_size=block, halo_size=halo, strides=strides,
                       window=window, dtype=dtype)


def _resize(table, old, new, strides=1, window="block"):
  """Resizes `table` of a layer with (b, h) = old to the same layer with (b', h') = new."""
  layer = _layer(*new, strides=strides, window=window)
  return table_resize.resize_relative_table(
      table, layer.reachable_offsets(*old), 2 * layer.window_size - 1, layer.reachable_offsets(),
      interpolate=window == "block")


@pytest.mark.parametrize("block,halo,strides,window", [
    (4, 1, 1, "block"), (8, 2, 1, "block"), (5, 3, 1, "block"), (4, 1, 2, "block"),
    (8, 2, 2, "block"), (6, 1, 3, "block"), (5, 2, 2, "block"),  # b % s != 0: pooled, stride 1
    (4, 2, 1, "centered"), (4, 1, 2, "centered")])
def test_reachable_offsets_are_exactly_the_rows_that_get_a_gradient(block, halo, strides, window):
  """The gradient of the output w.r.t. each table is nonzero on the rows reachable_offsets names
  and exactly zero elsewhere (gather and the window mask pass no gradient to other rows). Float64
  and a fixed seed: a reachable row's gradient is a sum of softmax-weighted products of random
  normals, zero only on a measure-zero set."""
  layer = _layer(block, halo, strides, window, dtype="float64")
  size = 2 * block * strides  # whole blocks of queries, each with every query row and key
  x = tf.constant(np.random.default_rng(1).normal(size=(1, size, size, 4)))
  layer.build(x.shape)
  weights = tf.constant(np.random.default_rng(2).normal(size=layer.compute_output_shape(x.shape)))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x) * weights)
  low, high = layer.reachable_offsets()
  offsets = np.arange(-(layer.window_size - 1), layer.window_size)
  for gradient in tape.gradient(loss, [layer.rel_pos_h, layer.rel_pos_w]):
    touched = np.any(tf.convert_to_tensor(gradient).numpy() != 0, axis=1)
    np.testing.assert_array_equal(offsets[touched], np.arange(low, high + 1))


def test_reachable_offsets_closed_form():
  """|o| <= b + h - 1 at stride 1; queries subsampled by s read s - 1 fewer negative offsets."""
  assert relative_position.reachable_offsets(8, 2) == (-9, 9)
  assert relative_position.reachable_offsets(8, 2, 2) == (-8, 9)
  assert relative_position.reachable_offsets(16, 1, 2) == (-15, 16)
  assert relative_position.reachable_offsets(8, 3, 1, centered=True) == (-3, 3)
  assert _layer(5, 2, strides=2).reachable_offsets() == (-6, 6)  # pooled: stride-1 queries


def _gin_finetune_pairs():
  """((b, h) of pretraining, (b', h') of fine-tuning) for every fine-tuning gin file."""
  pairs = []
  for path in sorted(glob.glob(os.path.join(GIN_DIR, "*.gin"))):
    config = runner.build_config(runner.RunOptions(
        gin_files=[os.path.basename(path)], gin_bindings=[  # demo.gin binds no data
            "experiment.train_input_path = '/tmp/unused'",
            "experiment.eval_input_path = '/tmp/unused'"])).config
    if not config.task.init_checkpoint:
      continue
    backbone = config.task.model.backbone.halonet
    spec = official_halonet.models.get_spec(backbone.model_id)
    old = (config.task.init_block_size or spec.block_size,
           spec.halo_size if config.task.init_halo_size is None else config.task.init_halo_size)
    pairs.append((old, (backbone.block_size or spec.block_size,
                        spec.halo_size if backbone.halo_size is None else backbone.halo_size)))
  return pairs


def test_the_gin_files_fine_tune_h4_i21k_from_b8_h2():
  assert sorted(_gin_finetune_pairs()) == [((8, 2), (12, 2)), ((8, 2), (16, 1))]


SENTINEL = 1e30


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("window", ["block", "centered"])
@pytest.mark.parametrize("old,new", _gin_finetune_pairs() + [
    ((12, 2), (8, 2)), ((16, 1), (8, 2)), ((8, 2), (10, 1)), ((4, 1), (8, 3)), ((6, 3), (4, 1)),
    ((5, 2), (7, 1)), ((8, 2), (8, 2))])
def test_untrained_rows_never_reach_the_fine_tuned_table(old, new, strides, window):
  """Rows the pretrained layer could not read hold a huge sentinel; no row of the resized table
  (readable or not) may carry any of it, and the readable rows stay within the trained values.
  (5, 2) and (7, 1) with stride 2 pool after stride-1 attention; (8, 2) -> (10, 1) keeps the
  table size but not the readable offsets."""
  old_layer = _layer(*old, strides=strides, window=window)
  low, high = old_layer.reachable_offsets()
  table = _offset_table(old_layer.window_size, seed=3)
  offsets = np.arange(-(old_layer.window_size - 1), old_layer.window_size)
  trained = (offsets >= low) & (offsets <= high)
  table[~trained] = SENTINEL
  resized = _resize(table, old, new, strides, window)
  assert resized.shape == (2 * (new[0] + 2 * new[1]) - 1, 3)
  assert np.all(resized >= table[trained].min(axis=0)) and np.all(
      resized <= table[trained].max(axis=0)), resized


@pytest.mark.parametrize("old,new", [((8, 2), (12, 2)), ((12, 2), (16, 1)), ((8, 2), (16, 1)),
                                     ((16, 1), (8, 2)), ((3, 1), (5, 2))])
def test_interpolation_shape_and_fixed_offsets(old, new):
  """Offset 0 and the outermost readable offsets +-(b + h - 1) -> +-(b' + h' - 1) keep their rows."""
  table = _offset_table(old[0] + 2 * old[1])
  resized = _resize(table, old, new)
  assert resized.shape == (2 * (new[0] + 2 * new[1]) - 1, 3) and resized.dtype == table.dtype
  reach, new_reach = old[0] + old[1] - 1, new[0] + new[1] - 1
  for old_offset, new_offset in ((0, 0), (reach, new_reach), (-reach, -new_reach)):
    np.testing.assert_array_equal(_at(resized, new_offset), _at(table, old_offset))


def test_interpolation_keeps_matching_offsets_and_interpolates_between():
  """b=2,h=1 (reach 2) -> b=4,h=1 (reach 4): old offset o lands on new offset 2o exactly, odd new
  offsets are the mean of the two old neighbours, and the unreadable outer rows repeat the
  outermost readable one. Float32 mean of two values: one rounding, rtol 2 ulp."""
  table = _offset_table(4)
  resized = _resize(table, (2, 1), (4, 1))
  for offset in range(-2, 3):
    np.testing.assert_array_equal(_at(resized, 2 * offset), _at(table, offset))
  for offset in range(-2, 2):
    np.testing.assert_allclose(_at(resized, 2 * offset + 1),
                               (_at(table, offset) + _at(table, offset + 1)) / 2,
                               rtol=2 * np.finfo(np.float32).eps)
  for offset in (5, 4 + 2 - 1):
    np.testing.assert_array_equal(_at(resized, offset), _at(table, 2))
    np.testing.assert_array_equal(_at(resized, -offset), _at(table, -2))


def test_strided_layers_map_each_side_of_offset_zero_onto_the_old_one():
  """Stride 2, b=8,h=2 (offsets -8..9) -> b=12,h=2 (-12..13): 0, -12 -> -8 and 13 -> 9 exactly,
  -3 -> -2 (k = 2/3 on the negative side); -13 (unreadable) repeats -12."""
  table = _offset_table(12)
  resized = _resize(table, (8, 2), (12, 2), strides=2)
  for new_offset, old_offset in ((0, 0), (-12, -8), (13, 9), (-3, -2), (-13, -8), (14, 9)):
    np.testing.assert_array_equal(_at(resized, new_offset), _at(table, old_offset))


def test_interpolation_is_exact_on_a_linear_function_of_the_scaled_offset():
  """A table linear in o / (b + h - 1) over the readable rows stays linear in o' / (b' + h' - 1);
  float64, a few roundings of values <= 3: atol 1e-12."""
  old, new = (8, 2), (12, 2)
  offsets = np.clip(np.arange(-11, 12), -9, 9)[:, None] / 9
  table = np.concatenate([offsets * 2.0 + 1.0, -offsets], axis=1)
  resized = _resize(table, old, new)
  expected = np.clip(np.arange(-15, 16), -13, 13)[:, None] / 13
  np.testing.assert_allclose(resized, np.concatenate([expected * 2.0 + 1.0, -expected], axis=1),
                             atol=1e-12)
  np.testing.assert_array_equal(_resize(table, old, old), table)


def test_recentring_keeps_every_readable_offset_row():
  """Masked windows, b=2,h=2 (|o| <= 2): growing to b=5 or shrinking to b=1 keeps offsets -2..2;
  halo 2 -> 3 gives the new offsets +-3 the outermost trained rows +-2 (not the table's +-5)."""
  table = _offset_table(6)
  for new in ((5, 2), (1, 2)):
    resized = _resize(table, (2, 2), new, window="centered")
    for offset in range(-2, 3):
      np.testing.assert_array_equal(_at(resized, offset), _at(table, offset))
  grown = _resize(table, (2, 2), (2, 3), window="centered")
  np.testing.assert_array_equal(_at(grown, 3), _at(table, 2))
  np.testing.assert_array_equal(_at(grown, -3), _at(table, -2))


def test_resizing_rejects_an_even_row_count_and_a_reach_outside_the_table():
  with pytest.raises(ValueError, match="odd"):
    table_resize.resize_relative_table(_offset_table(4), (-2, 2), 8, (-3, 3))
  with pytest.raises(ValueError, match=r"old_reach: reachable offsets \[-5, 5\]"):
    table_resize.resize_relative_table(_offset_table(4), (-5, 5), 9, (-3, 3))


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


PRETRAINED = (4, 1)  # the tiny model's b, h, which the 'pretraining' run used


def _table_owners(model):
  return {id(table): layer for layer in model.submodules if isinstance(layer, HaloAttention)
          for table in (getattr(layer, "rel_pos_h", None), getattr(layer, "rel_pos_w", None))}


def _expected_backbone(model, checkpoint):
  """[(entry, value)] the backbone should start from: tables of the halo layers (b=8 now)
  interpolated from their b=4 readable rows, everything else (the SASA tables too) as stored."""
  found = checkpoints.match(model, checkpoint)
  owners = _table_owners(model)
  expected = []
  for entry in found.entries:
    if not entry.in_backbone:
      continue
    value = found.value(entry)
    if entry.is_rel_pos_table and value.shape != entry.model_shape:
      layer = owners[id(entry.variable)]
      value = table_resize.resize_relative_table(value, layer.reachable_offsets(*PRETRAINED),
                                             entry.model_shape[0], layer.reachable_offsets())
    expected.append((entry, value))
  return expected


def test_task_initialize_loads_the_backbone_interpolates_tables_and_zeroes_the_head(pretrained):
  config = runner.build_config(runner.RunOptions(
      gin_files=["demo.gin"], gin_bindings=_bindings(pretrained["data_dir"]) + FINETUNE + [
          f"experiment.init_checkpoint = '{pretrained['model_dir']}'"])).config
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
      gin_files=[os.path.join(model_dir, "operative_config.gin")])).config
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
          f"experiment.init_checkpoint = '{pretrained['checkpoint']}'"])).config
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
          "experiment.final_width = 16"])).config.task).build_model()
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r"final.*model \[1, 1, \d+, 16\], checkpoint \[1, 1, \d+, 32\]"):
    restore.restore(model, pretrained["model_dir"], modules="backbone", resize_tables=True)


def test_all_modules_with_the_same_classes_copies_the_classifier(pretrained):
  config = runner.build_config(runner.RunOptions(
      gin_files=["demo.gin"], gin_bindings=_bindings(pretrained["data_dir"]) + [
          "experiment.block_size = 8"])).config
  model = task_factory.get_task(config.task).build_model()
  summary = restore.restore(model, pretrained["model_dir"], modules="all", resize_tables=True)
  assert not summary.zeroed and len(summary.resized) == 4 and not summary.used_ema
  reader = tf.train.load_checkpoint(pretrained["checkpoint"])
  np.testing.assert_array_equal(
      model.layers[-1].kernel.numpy(),
      reader.get_tensor("model/layer_with_weights-1/kernel/.ATTRIBUTES/VARIABLE_VALUE"))


def test_restore_never_copies_untrained_rows_of_any_layer(pretrained, tmp_path):
  """The pretrained tiny model (b=4, h=1: stride-2 and stride-1 halo layers, a masked SASA
  layer) with a sentinel in every table row its layer cannot read, restored into b=8: no table of
  the fine-tuned model holds the sentinel, and the SASA tables (same shape) are copied as they
  are, sentinel rows included, since nothing reads them."""
  def build(bindings):
    return task_factory.get_task(runner.build_config(runner.RunOptions(
        gin_files=["demo.gin"], gin_bindings=_bindings(pretrained["data_dir"]) + bindings)
                                                     ).config.task).build_model()

  source = build([])
  tf.train.Checkpoint(model=source).read(pretrained["checkpoint"]).expect_partial()
  for table, layer in ((t, l) for l in source.submodules if isinstance(l, HaloAttention)
                       for t in (l.rel_pos_h, l.rel_pos_w)):
    low, high = layer.reachable_offsets()
    offsets = np.arange(-(layer.window_size - 1), layer.window_size)
    value = table.numpy()
    value[(offsets < low) | (offsets > high)] = SENTINEL
    table.assign(value)
  prefix = tf.train.Checkpoint(model=source).write(str(tmp_path / "sentinel"))
  model = build(FINETUNE)
  summary = restore.restore(model, prefix, modules="backbone", resize_tables=True)
  assert len(summary.resized) == 4, summary.resized
  owners = _table_owners(model)
  for variable in model.backbone.variables:
    layer = owners.get(id(variable))
    if layer is None:
      continue
    if isinstance(layer, SASAAttention):
      assert np.max(variable.numpy()) == SENTINEL, variable.name  # copied unchanged
    else:
      assert np.max(np.abs(variable.numpy())) < 100, variable.name


def test_pretraining_b_and_h_that_cannot_give_the_stored_table_are_refused(pretrained):
  model = task_factory.get_task(runner.build_config(runner.RunOptions(
      gin_files=["demo.gin"], gin_bindings=_bindings(pretrained["data_dir"]) + FINETUNE)
                                                    ).config.task).build_model()
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"rel_pos_h: the checkpoint's table has 11 rows, but the pretraining "
                           r"block 6 and halo 1 give 2\(b\+2h\)-1 = 15; set "
                           r"experiment.init_block_size"):
    restore.restore(model, pretrained["model_dir"], modules="backbone", resize_tables=True,
                    pretrained_block_size=6)
