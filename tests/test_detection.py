"""Detection and segmentation: the gin/detection files -> Model Garden Mask R-CNN / RetinaNet with
the halo and SASA backbones, trained and evaluated on synthetic COCO-format TFRecords on the CPU.

Every gin file is parsed as main.py parses it, its `detection_experiment` builds the Model Garden
ExperimentConfig, and Model Garden's task builds the detector; test bindings only shrink it (the
file's backbone resized by the backbone config's shape overrides through params_override — same
stage types, stem, b, h and SE — small heads, 128–192 px, batch 2). One configuration also runs
through `train_lib.run_experiment`, main.py's entry.
"""
import glob
import os

import numpy as np
import pytest

import detection_fixtures as fx
import gin
import tensorflow as tf
import tf_keras

from official.core import base_trainer
from official.core import exp_factory
from official.core import task_factory
from official.core import train_lib
from official.core import train_utils
from official.modeling import hyperparams
from official.vision.configs import image_classification as mg_classification
from official.vision.modeling import backbones as mg_backbones
from official.vision.modeling import decoders as mg_decoders
from official.vision.tasks import maskrcnn as mg_maskrcnn
from official.vision.tasks import retinanet as mg_retinanet
from official_halonet.layers import HaloAttention, SASAAttention, SpatiallyAwareAttention
from official_halonet.models import HaloNet, factory
from official_halonet.training import detection

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO, "gin")

ONE = fx.ONE_BLOCK_PER_STAGE
# gin file -> (kind, paper backbone, blocks per stage of its tiny version, test image size)
GIN_FILES = {
    "maskrcnn_r50_halo_b8.gin": ("maskrcnn", "resnet50_se_halo_b8", ONE, 128),
    # 192 px: stage 4 maps are 12×12 and 6×6, not multiples of b=32 (padded inside the layer).
    "maskrcnn_r50_halo_b32.gin": ("maskrcnn", "resnet50_se_halo_b32", ONE, 192),
    # R101's deeper stage 3 stays deeper.
    "maskrcnn_r101_halo_b8.gin": ("maskrcnn", "resnet101_se_halo_b8", (1, 1, 2, 1), 128),
    "retinanet_r50_halo_b8.gin": ("retinanet", "resnet50_se_halo_b8", ONE, 128),
    "retinanet_sasa_r50.gin": ("retinanet", "sasa_resnet50", ONE, 128),
    "retinanet_sasa_r50_attention_stem.gin": ("retinanet", "sasa_resnet50_attention_stem", ONE,
                                              128),
}
NUM_CLASSES = 4
NUM_EXAMPLES = 2
LOSSES = {
    "maskrcnn": ("rpn_score_loss", "rpn_box_loss", "frcnn_cls_loss", "frcnn_box_loss",
                 "mask_loss", "model_loss", "total_loss"),
    "retinanet": ("cls_loss", "box_loss", "model_loss", "total_loss"),
}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
  """Synthetic COCO-format records and their instances JSON."""
  directory = tmp_path_factory.mktemp("coco")
  records = fx.write_coco_tfrecord(str(directory / "val.tfrecord"), num_examples=NUM_EXAMPLES,
                                   num_classes=NUM_CLASSES)
  annotations = fx.write_coco_annotations(records, str(directory / "instances.json"),
                                          NUM_EXAMPLES)
  return records, annotations


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def parse_gin(name, bindings=()):
  """Parses gin/detection/<name> (its include resolves against gin/) and extra bindings."""
  gin.add_config_file_search_path(GIN_DIR)
  gin.parse_config_files_and_bindings([os.path.join(GIN_DIR, "detection", name)], list(bindings))


def test_builder_is_registered_with_gin_through_the_files_import():
  # Each file's include imports official_halonet.training.detection, so a runner that parses the
  # file finds `detection_experiment` without importing anything itself.
  with open(os.path.join(GIN_DIR, "detection", "coco.gin")) as f:
    assert "import official_halonet.training.detection" in f.read()
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(GIN_DIR, "detection", "*.gin"))
                ) == sorted(list(GIN_FILES) + ["coco.gin"])


@pytest.mark.parametrize("name", sorted(GIN_FILES))
def test_gin_file_binds_the_paper_recipe(name):
  kind, backbone, _, _ = GIN_FILES[name]
  parse_gin(name)
  config = detection.detection_experiment(mixed_precision_default="bfloat16")
  task = config.task
  task_cls = {"maskrcnn": mg_maskrcnn.MaskRCNNTask, "retinanet": mg_retinanet.RetinaNetTask}
  assert isinstance(task_factory.get_task(task), task_cls[kind])
  assert task.model.backbone.type == "halonet"
  assert task.model.backbone.halonet.model_id == backbone
  assert task.model.input_size == [1024, 1024, 3]
  assert task.model.num_classes == 91
  assert task.model.norm_activation.use_sync_bn
  assert task.losses.l2_weight_decay == 4e-5
  assert task.train_data.global_batch_size == 64
  assert task.train_data.parser.aug_scale_min == 0.8
  assert task.train_data.parser.aug_scale_max == 1.25
  assert task.train_data.parser.aug_rand_hflip
  assert task.init_checkpoint_modules == "backbone"
  assert config.trainer.train_steps == 67500
  assert config.runtime.mixed_precision_dtype == "bfloat16"
  assert task.train_data.dtype == "bfloat16"
  optimizer = config.trainer.optimizer_config
  assert optimizer.optimizer.type == "sgd" and optimizer.optimizer.sgd.momentum == 0.9
  assert optimizer.learning_rate.type == "stepwise"
  assert optimizer.learning_rate.stepwise.boundaries == [60000, 65000]
  np.testing.assert_allclose(optimizer.learning_rate.stepwise.values, [0.1, 0.01, 0.001])
  assert optimizer.warmup.type == "linear" and optimizer.warmup.linear.warmup_steps == 500
  # The learning rate the optimizer factory builds follows the schedule.
  schedule = task_factory.get_task(task).create_optimizer(optimizer).learning_rate
  for step, expected in ((500, 0.1), (59999, 0.1), (60001, 0.01), (65001, 0.001)):
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)
  assert float(schedule(0)) < 0.01  # warm-up starts low
  # The config survives Model Garden's dict / YAML round trip (params.yaml in model_dir) through
  # the registered experiment, whose backbone one-of knows 'halonet'.
  reloaded = exp_factory.get_exp_config(f"{kind}_halonet_coco")
  reloaded.override(config.as_dict(), is_strict=True)
  assert reloaded.as_dict() == config.as_dict()


def tiny_model_override(backbone, blocks):
  """task.model overrides that shrink `backbone` through the backbone config (HaloNetConfig)."""
  return {"backbone": {"halonet": fx.tiny_overrides(backbone, blocks)}}


def tiny_bindings(kind, backbone, blocks, image_size, records, annotations, extra=()):
  """The file's backbone (bound again, so a test can name another) shrunk by the backbone config's
  shape overrides, small heads, tiny data and intervals."""
  model = dict(fx.SMALL_HEADS[kind], **tiny_model_override(backbone, blocks))
  override = {"task": {"model": model}}
  return [
      f"detection_experiment.backbone = '{backbone}'",
      f"detection_experiment.image_size = {image_size}",
      f"detection_experiment.num_classes = {NUM_CLASSES}",
      f"detection_experiment.train_input_path = '{records}'",
      f"detection_experiment.eval_input_path = '{records}'",
      # Mask R-CNN writes its own annotation JSON from the records (Model Garden's path when no
      # file is given); RetinaNet needs one.
      "detection_experiment.annotation_file = "
      + ("None" if kind == "maskrcnn" else f"'{annotations}'"),
      f"detection_experiment.num_eval_examples = {NUM_EXAMPLES}",
      "detection_experiment.global_batch_size = 2",
      "detection_experiment.eval_batch_size = 2",
      "detection_experiment.train_steps = 1",
      "detection_experiment.steps_per_loop = 1",
      "detection_experiment.summary_interval = 1",
      "detection_experiment.checkpoint_interval = 1",
      "detection_experiment.validation_interval = 1",
      f"detection_experiment.params_override = {override!r}",
  ] + list(extra)


def assert_backbone(model, kind, name, blocks):
  backbone = model.backbone
  assert isinstance(backbone, HaloNet) and backbone.spec == fx.tiny_spec(name, blocks)
  kinds = {type(layer) for layer in backbone.layers}
  if "halo" in name:
    assert HaloAttention in kinds
  if "sasa" in name:
    assert SASAAttention in kinds
    assert (SpatiallyAwareAttention in kinds) == ("attention_stem" in name)
  levels = range(2, 7) if kind == "maskrcnn" else range(3, 8)
  assert sorted(int(k) for k in model.decoder.output_specs) == list(levels)


@pytest.mark.parametrize("name", sorted(GIN_FILES))
def test_detector_trains_and_evaluates(name, coco, tmp_path):
  kind, backbone, blocks, image_size = GIN_FILES[name]
  records, annotations = coco
  parse_gin(name, tiny_bindings(kind, backbone, blocks, image_size, records, annotations))
  config = detection.detection_experiment()  # float32: main.py's default off TPU / GPU
  assert config.task.model.input_size == [image_size, image_size, 3]
  task = task_factory.get_task(config.task, logging_dir=str(tmp_path))
  model = task.build_model()
  assert_backbone(model, kind, backbone, blocks)

  optimizer = task.create_optimizer(config.trainer.optimizer_config, config.runtime)
  metrics = task.build_metrics(training=True)
  images, labels = next(iter(task.build_inputs(config.task.train_data)))
  assert images.shape == (2, image_size, image_size, 3)
  before = [w.numpy() for w in model.backbone.trainable_weights]
  task.train_step((images, labels), model, optimizer, metrics)
  losses = {m.name: float(m.result()) for m in metrics}
  assert set(LOSSES[kind]) <= set(losses), losses
  for loss in LOSSES[kind]:
    assert np.isfinite(losses[loss]), (loss, losses)
  assert losses["total_loss"] > 0
  changed = [not np.array_equal(b, w.numpy())
             for b, w in zip(before, model.backbone.trainable_weights)]
  assert sum(changed) > len(changed) // 2, "the step should update the backbone"

  # One evaluation step, through Model Garden's COCO evaluator.
  eval_metrics = task.build_metrics(training=False)
  batch = next(iter(task.build_inputs(config.task.validation_data)))
  logs = task.validation_step(batch, model, eval_metrics)
  results = task.reduce_aggregated_logs(task.aggregate_logs(None, logs))
  coco_keys = ["AP", "AP50", "ARmax100"] + (["mask_AP", "mask_AP50"] if kind == "maskrcnn" else [])
  for key in coco_keys:
    assert np.isfinite(results[key]) and -1.0 <= results[key] <= 1.0, (key, results)
  for m in eval_metrics:  # RetinaNet also reports its losses on the validation batch
    assert np.isfinite(float(m.result())), m.name


def _summaries(log_dir):
  """{tag: last scalar} of the summary events under `log_dir`."""
  values = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(log_dir, "events.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        values[value.tag] = float(tf.make_ndarray(value.tensor))
  return values


def test_run_experiment_trains_and_evaluates(coco, tmp_path):
  """main.py's route: gin -> detection_experiment -> Model Garden train_lib.run_experiment."""
  name = "maskrcnn_r50_halo_b32.gin"
  kind, backbone, blocks, image_size = GIN_FILES[name]
  records, annotations = coco
  parse_gin(name, tiny_bindings(kind, backbone, blocks, image_size, records, annotations))
  config = detection.detection_experiment()
  model_dir = str(tmp_path / "model")
  train_utils.serialize_config(config, model_dir)  # params.yaml, as Model Garden's train.py does
  task = task_factory.get_task(config.task, logging_dir=model_dir)
  # The evaluation train_and_eval runs after training is read from its summaries (as TensorBoard
  # reads it); run_post_eval would evaluate a second time.
  model, _ = train_lib.run_experiment(
      distribution_strategy=tf.distribute.get_strategy(), task=task, mode="train_and_eval",
      params=config, model_dir=model_dir, run_post_eval=False)
  assert isinstance(model.backbone, HaloNet)
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-1")
  eval_logs, train_losses = (_summaries(os.path.join(model_dir, d)) for d in ("validation", "train"))
  for key in ("AP", "mask_AP"):
    assert np.isfinite(eval_logs[key]), eval_logs
  for loss in LOSSES[kind]:
    assert np.isfinite(train_losses[loss]), (loss, train_losses)
  # The params.yaml in model_dir reloads through the registered experiment.
  reloaded = hyperparams.override_params_dict(
      exp_factory.get_exp_config("maskrcnn_halonet_coco"), os.path.join(model_dir, "params.yaml"),
      is_strict=True)
  halonet = reloaded.task.model.backbone.halonet
  assert halonet.model_id == backbone
  assert {k: halonet.as_dict()[k] for k in fx.tiny_overrides(backbone)} == fx.tiny_overrides(
      backbone)
  assert reloaded.as_dict() == config.as_dict()


def test_classification_checkpoint_initialises_the_detection_backbone(coco, tmp_path):
  backbone = "resnet50_se_halo_b8"
  # A classification run's checkpoint, written the way Model Garden's trainer writes it
  # (global_step, model, optimizer and the model's checkpoint_items: `backbone`).
  cls_config = exp_factory.get_exp_config("resnet_imagenet")
  cls_config.task.model = mg_classification.ImageClassificationModel(
      num_classes=10, input_size=[64, 64, 3],
      backbone=factory.Backbone(type="halonet", halonet=factory.HaloNetConfig(
          model_id=backbone, **fx.tiny_overrides(backbone))))
  cls_task = task_factory.get_task(cls_config.task)
  cls_model = cls_task.build_model()
  rng = np.random.default_rng(0)
  for weight in cls_model.backbone.weights:  # trained-looking values, BN statistics included
    weight.assign(rng.normal(size=weight.shape).astype(weight.dtype.as_numpy_dtype))
  trainer = base_trainer.Trainer(
      cls_config, cls_task, cls_model,
      cls_task.create_optimizer(cls_config.trainer.optimizer_config), train=False,
      evaluate=False)
  cls_dir = str(tmp_path / "classification")
  tf.train.CheckpointManager(trainer.checkpoint, cls_dir, max_to_keep=1).save(checkpoint_number=7)

  records, annotations = coco
  for name in ("maskrcnn_r50_halo_b8.gin", "retinanet_r50_halo_b8.gin"):
    kind = GIN_FILES[name][0]
    gin.clear_config()
    parse_gin(name, tiny_bindings(kind, backbone, ONE, 128, records, annotations,
                                  [f"detection_experiment.init_checkpoint = '{cls_dir}'"]))
    config = detection.detection_experiment()
    assert config.task.init_checkpoint == cls_dir
    task = task_factory.get_task(config.task, logging_dir=str(tmp_path))
    model = task.build_model()
    decoder_before = [w.numpy() for w in model.decoder.weights]
    pairs = list(zip(cls_model.backbone.weights, model.backbone.weights))
    assert len(pairs) == len(cls_model.backbone.weights) == len(model.backbone.weights)
    assert not all(np.array_equal(c.numpy(), d.numpy()) for c, d in pairs)
    task.initialize(model)  # what the trainer calls when model_dir has no checkpoint yet
    for cls_weight, det_weight in pairs:
      assert cls_weight.shape == det_weight.shape
      np.testing.assert_array_equal(det_weight.numpy(), cls_weight.numpy(), err_msg=det_weight.name)
    for before, weight in zip(decoder_before, model.decoder.weights):  # decoder: from scratch
      np.testing.assert_array_equal(weight.numpy(), before)

  # A checkpoint of another backbone does not load silently.
  gin.clear_config()
  parse_gin("retinanet_sasa_r50.gin", tiny_bindings(
      "retinanet", "sasa_resnet50", ONE, 128, records, annotations,
      [f"detection_experiment.init_checkpoint = '{cls_dir}'"]))
  config = detection.detection_experiment()
  task = task_factory.get_task(config.task)
  with pytest.raises(ValueError, match="incompatible tensor"):
    task.initialize(task.build_model())


@pytest.mark.parametrize("name,size", [("resnet50_se_halo_b32", 384),
                                       ("resnet50_se_halo_b32", 1024),
                                       ("resnet50_se_halo_b32", 1152),
                                       ("sasa_resnet50", 640)])
def test_fpn_accepts_the_backbone_at_any_size(name, size):
  """Model Garden's factories build backbone + FPN from output_specs; level l is ceil(S / 2^l)."""
  config = detection.detection_experiment(
      kind="retinanet", backbone=name, image_size=size, annotation_file="unused.json",
      params_override={"task": {"model": tiny_model_override(name, ONE)}})
  model_config = config.task.model
  input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
  backbone = mg_backbones.factory.build_backbone(
      input_specs=input_specs, backbone_config=model_config.backbone,
      norm_activation_config=model_config.norm_activation)
  assert backbone.spec == fx.tiny_spec(name)
  decoder = mg_decoders.factory.build_decoder(
      input_specs=backbone.output_specs, model_config=model_config)
  for level, shape in backbone.output_specs.items():
    side = -(-size // 2**int(level))
    assert shape[1:3] == (side, side), (level, shape)
  features = decoder(backbone(tf.random.uniform([1, size, size, 3]), training=False))
  for level in range(3, 8):
    side = -(-size // 2**level)
    assert features[str(level)].shape == (1, side, side, model_config.decoder.fpn.num_filters)
    assert np.all(np.isfinite(features[str(level)].numpy()))


def test_real_detection_backbones_give_fpn_levels_at_1024():
  """The paper backbones themselves (full width) build with the FPN at 1024 px."""
  for backbone_name in ("resnet50_se_halo_b32", "sasa_resnet50"):
    config = detection.detection_experiment(kind="maskrcnn", backbone=backbone_name)
    model_config = config.task.model
    backbone = mg_backbones.factory.build_backbone(
        input_specs=tf_keras.layers.InputSpec(shape=[None, 1024, 1024, 3]),
        backbone_config=model_config.backbone,
        norm_activation_config=model_config.norm_activation)
    assert {k: tuple(v) for k, v in backbone.output_specs.items()} == {
        "2": (None, 256, 256, 256), "3": (None, 128, 128, 512), "4": (None, 64, 64, 1024),
        "5": (None, 32, 32, 2048)}
    decoder = mg_decoders.factory.build_decoder(
        input_specs=backbone.output_specs, model_config=model_config)
    assert sorted(decoder.output_specs) == ["2", "3", "4", "5", "6"]


def test_invalid_settings_fail_before_any_work():
  with pytest.raises(ValueError, match="kind"):
    detection.detection_experiment(kind="fcos")
  with pytest.raises(ValueError, match="Unknown model"):
    detection.detection_experiment(backbone="resnet50_halo")
  with pytest.raises(ValueError, match="decay_boundaries"):
    detection.detection_experiment(decay_boundaries=[65000, 60000])
  with pytest.raises(ValueError, match="annotation_file"):
    detection.detection_experiment(kind="retinanet", annotation_file=None)
  with pytest.raises(ValueError, match="mixed_precision"):
    detection.detection_experiment(mixed_precision="float8")
  with pytest.raises(KeyError):
    detection.detection_experiment(params_override={"task": {"model": {"no_such_field": 1}}})
  with pytest.raises(ValueError, match="model 'resnet50_se_halo_b8': blocks must list 4"):
    detection.detection_experiment(params_override={"task": {"model": {"backbone": {
        "halonet": {"blocks": [1, 1, 1]}}}}})
