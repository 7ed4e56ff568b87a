"""Every published recipe is one registered Model Garden experiment, read by both surfaces.

For each gin file that binds `experiment.recipe` or `detection_experiment.recipe`, the gin path (runner.build_config) and Model
Garden's experiment factory give the same params; official_halonet/train.py's Model Garden flags
(--experiment, --config_file, --params_override) override a registered recipe. Config
comparisons only, no model is built: 53 s with the machine at load 9.
"""
import glob
import os
import re

import pytest
from absl import flags

import official_halonet  # noqa: F401
import tf_keras
from official.common import flags as tfm_flags
from official.core import exp_factory
from official.core import task_factory
from official_halonet import models
from official_halonet import train
from official_halonet.training import experiment as experiment_lib
from official_halonet.training import recipes
from official_halonet.models import specs
from official_halonet.training import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_BINDING = re.compile(r"^(?:detection_)?experiment\.recipe\s*=\s*'([^']+)'", re.M)
ALL_RECIPES = {**recipes.RECIPES, **recipes.DETECTION_RECIPES}


def _recipe_files():
  found = {}
  for path in sorted(glob.glob(os.path.join(ROOT, "gin", "**", "*.gin"), recursive=True)):
    match = RECIPE_BINDING.search(open(path).read())
    if match:
      found[os.path.relpath(path, os.path.join(ROOT, "gin"))] = match.group(1)
  return found


RECIPE_FILES = _recipe_files()


def test_every_recipe_has_one_gin_file_and_is_registered():
  assert sorted(RECIPE_FILES.values()) == sorted(ALL_RECIPES)
  expected = {f"halonet_h{i}_imagenet" for i in range(8)} | {
      "halonet_h7_c1_imagenet", "halonet_h7_c12_imagenet", "halonet_h7_c123_imagenet",
      "halonet50_imagenet", "resnet50_imagenet", "sasa_resnet26_imagenet",
      "sasa_resnet38_imagenet", "sasa_resnet50_imagenet", "h4_i21k_pretrain",
      "h4_i21k_finetune_384", "h4_i21k_finetune_512"}
  assert expected <= set(recipes.RECIPES)
  for name in ALL_RECIPES:
    assert exp_factory.get_exp_config(name).task.model.backbone.type == "halonet"


@pytest.mark.parametrize("gin_file", sorted(RECIPE_FILES))
def test_gin_file_and_registered_experiment_give_the_same_params(gin_file):
  via_gin = runner.build_config(runner.RunOptions(gin_files=[gin_file]), "bfloat16").config
  registered = exp_factory.get_exp_config(RECIPE_FILES[gin_file])
  assert via_gin.as_dict() == registered.as_dict()


def test_a_gin_binding_overrides_the_recipe_it_names():
  config = runner.build_config(runner.RunOptions(
      gin_files=["h1.gin"], gin_bindings=["EPOCHS = 90", "experiment.epochs = %EPOCHS"])).config
  assert config.trainer.train_steps == 90 * (1281167 // 4096)  # the macro's value, resolved
  assert config.task.model.backbone.halonet.model_id == "h1"
  detection = runner.build_config(runner.RunOptions(
      gin_files=["detection/retinanet_sasa_r50.gin"],
      gin_bindings=["detection_experiment.train_steps = 77"])).config
  assert detection.trainer.train_steps == 77
  assert detection.task.model.backbone.halonet.model_id == "sasa_resnet50"


def test_an_unknown_recipe_names_where_it_was_bound(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("experiment.recipe = 'halonet_h9_imagenet'\n")
  with pytest.raises(runner.ConfigurationError, match=r"bad.gin:1: experiment.recipe: unknown"):
    runner.build_config(runner.RunOptions(gin_files=[str(bad)]))


@pytest.fixture
def model_garden_flags():
  """absl's FLAGS with Model Garden's flags (official.common.flags) defined, as train.py has them;
  parsed by the test, reset afterwards."""
  if "experiment" not in flags.FLAGS:
    tfm_flags.define_flags()
  yield flags.FLAGS
  flags.FLAGS.unparse_flags()


def test_model_garden_flags_override_a_registered_recipe(model_garden_flags, tmp_path):
  config_file = tmp_path / "my.yaml"
  config_file.write_text("task:\n  train_data:\n    global_batch_size: 256\n")
  model_garden_flags(["train", "--experiment=halonet_h1_imagenet", "--mode=train_and_eval",
                      f"--model_dir={tmp_path / 'run'}", f"--config_file={config_file}",
                      "--params_override=task.train_data.input_path=/data/train-*,"
                      "runtime.mixed_precision_dtype=float32"])
  built = train.config_from_flags(model_garden_flags)
  assert built.configurable == "experiment"
  assert built.config.task.train_data.global_batch_size == 256
  assert built.config.task.train_data.input_path == "/data/train-*"
  assert built.config.runtime.mixed_precision_dtype == "float32"
  assert built.config.task.model.backbone.halonet.model_id == "h1"
  options = train.options_from_flags(built, model_garden_flags)
  assert (options.mode, options.strategy, options.gin_files) == ("train_and_eval", "mirrored", ())


def test_recipes_state_only_what_differs_from_the_settings_defaults():
  # Settings' defaults are the paper's ImageNet recipe; a recipe that restated one would be a
  # second declaration of it (test_config_snapshot pins what every recipe builds).
  defaults = experiment_lib.Settings()
  named = {"IMAGENET": recipes.IMAGENET, "ABLATION": recipes.ABLATION, "SASA": recipes.SASA,
           "I21K_PRETRAIN": recipes.I21K_PRETRAIN, "I21K_FINETUNE": recipes.I21K_FINETUNE}
  for name, recipe in named.items():
    restated = {k: v for k, v in recipe.items() if getattr(defaults, k) == v}
    assert not restated, f"{name} restates Settings' defaults {restated}"


def _batch_norms(model):
  """(momentum, epsilon) of every BatchNormalization layer in `model` and its nested models."""
  found = []
  for layer in model.layers:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      found.append((layer.name, layer.momentum, layer.epsilon))
    elif isinstance(layer, tf_keras.Model):
      found.extend(_batch_norms(layer))
  return found


def test_a_recipes_model_has_the_batch_norm_of_models_build():
  # BatchNorm is declared once, in the model's spec; the recipe's task, models.build and a
  # detection config read it the same way. The H1 recipe, narrowed so it builds in seconds.
  small = dict(blocks=[1, 1, 1, 1], base_width=8, stem_width=8)
  config = exp_factory.get_exp_config("halonet_h1_imagenet")
  config.override({"task": {"model": {"input_size": [64, 64, 3], "backbone": {
      "halonet": small}}}})
  trained = task_factory.get_task(config.task).build_model()
  built = models.build("h1", image_size=64, **small)
  spec = specs.get_spec("h1")
  assert _batch_norms(trained) == _batch_norms(built)
  assert {(m, e) for _, m, e in _batch_norms(built)} == {(spec.norm_momentum, spec.norm_epsilon)}
  detection = exp_factory.get_exp_config("retinanet_r50_halo_b8_coco").task.model.norm_activation
  resnet = specs.get_spec("resnet50_se_halo_b8")
  assert (detection.norm_momentum, detection.norm_epsilon) == (resnet.norm_momentum,
                                                               resnet.norm_epsilon)


def _model_garden(model_garden_flags, tmp_path, *overrides, yaml=""):
  """train.py's config for halonet_h1_imagenet with `overrides` (--params_override) and `yaml`."""
  args = ["train", "--experiment=halonet_h1_imagenet", "--mode=train",
          f"--model_dir={tmp_path / 'run'}"]
  if yaml:
    (tmp_path / "my.yaml").write_text(yaml)
    args.append(f"--config_file={tmp_path / 'my.yaml'}")
  model_garden_flags(args + [f"--params_override={','.join(overrides)}"] if overrides else args)
  return train.config_from_flags(model_garden_flags).config


def _gin(*bindings):
  return runner.build_config(runner.RunOptions(gin_files=["h1.gin"], gin_bindings=list(bindings)),
                             "bfloat16").config


def _same_run(a, b):
  for part in ("task", "trainer"):
    assert getattr(a, part).as_dict() == getattr(b, part).as_dict(), part


def test_a_changed_batch_rederives_the_schedule_as_gin_does(model_garden_flags, tmp_path):
  config = _model_garden(model_garden_flags, tmp_path, "task.train_data.global_batch_size=1024")
  _same_run(config, _gin("experiment.global_batch_size = 1024"))
  steps_per_epoch = 1281167 // 1024
  cosine = config.trainer.optimizer_config.learning_rate.cosine
  assert cosine.initial_learning_rate == 0.1 * 1024 / 256
  assert config.trainer.optimizer_config.warmup.linear.warmup_steps == 10 * steps_per_epoch
  assert config.trainer.train_steps == 350 * steps_per_epoch
  assert cosine.decay_steps == (350 - 10) * steps_per_epoch
  assert config.task.validation_data.global_batch_size == 1024  # as gin: eval batch follows


def test_changed_steps_and_classes_rederive_what_follows_them(model_garden_flags, tmp_path):
  config = _model_garden(model_garden_flags, tmp_path, "trainer.train_steps=5000",
                         "task.model.num_classes=10")
  _same_run(config, _gin("experiment.train_steps = 5000", "experiment.num_classes = 10"))
  assert config.trainer.optimizer_config.learning_rate.cosine.decay_steps == 5000 - 3120
  assert config.task.train_data.num_classes == config.task.validation_data.num_classes == 10


def test_a_value_the_overrides_set_is_kept(model_garden_flags, tmp_path):
  config = _model_garden(
      model_garden_flags, tmp_path, "task.train_data.global_batch_size=1024",
      "trainer.optimizer_config.learning_rate.cosine.initial_learning_rate=0.5")
  assert config.trainer.optimizer_config.learning_rate.cosine.initial_learning_rate == 0.5
  assert config.trainer.optimizer_config.warmup.linear.warmup_steps == 10 * (1281167 // 1024)


def test_input_size_declares_the_image_size_of_both_pipelines(model_garden_flags, tmp_path):
  config = _model_garden(model_garden_flags, tmp_path,
                         yaml="task:\n  model:\n    input_size: [32, 32, 3]\n")
  _same_run(config, _gin("experiment.image_size = 32"))
  assert config.task.train_data.image_size == config.task.validation_data.image_size == 32


@pytest.mark.parametrize("yaml, message", [
    ("task:\n  model:\n    input_size: [32, 32, 3]\n  train_data:\n    image_size: 64\n",
     r"^task\.train_data\.image_size = 64 disagrees with task\.model\.input_size = \[32, 32, 3\]"),
    ("task:\n  validation_data:\n    image_size: 64\n",
     r"^task\.validation_data\.image_size = 64 disagrees with task\.model\.input_size = "
     r"\[256, 256, 3\]"),
    ("task:\n  model:\n    input_size: [32, 48, 3]\n",
     r"^task\.model\.input_size must be \[S, S, 3\] \(square RGB images\), got \[32, 48, 3\]$"),
    ("task:\n  train_data:\n    global_batch_size: 0\n",
     r"^task\.train_data\.global_batch_size: global_batch_size must be > 0, got 0$"),
])
def test_disagreeing_or_impossible_sizes_fail_in_one_line(model_garden_flags, tmp_path, yaml,
                                                          message):
  with pytest.raises(ValueError, match=message) as raised:
    _model_garden(model_garden_flags, tmp_path, yaml=yaml)
  assert "\n" not in str(raised.value)
