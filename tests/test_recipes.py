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
from official.common import flags as tfm_flags
from official.core import exp_factory
from official_halonet import train
from official_halonet.training import experiment as experiment_lib
from official_halonet.training import recipes
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
