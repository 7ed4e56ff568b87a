"""Attention maps as pictures and the quiet console: probing a model's attention layers, the PNG
grid, the mean attention distance, main.py's line count on a tiny run, TensorBoard's attention
images and the visualize CLI on that run's checkpoint."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import official_halonet  # noqa: F401
import tensorflow as tf

from official_halonet import visualize
from official_halonet.models import attention_figure
from official_halonet.models import attention_maps
from official_halonet.models import factory
import demo

# One xdist worker runs all of this module (make test: --dist loadgroup), so its module-scoped
# fixtures (training runs, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("visualize")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RUN = ["experiment.train_steps = 6", "experiment.warmup_epochs = 0",
            "experiment.steps_per_loop = 2", "experiment.checkpoint_interval = 6",
            "experiment.validation_interval = 6"]
MAX_CONSOLE_LINES = 60


@pytest.fixture(scope="module")
def tiny():
  model = factory.build("tiny", num_classes=10, image_size=32)
  images = tf.random.stateless_normal([2, 32, 32, 3], seed=[1, 2]).numpy()
  return model, images


def test_probe_reads_every_attention_layer_with_positions_in_image_pixels(tiny):
  model, images = tiny
  attentions = attention_maps.probe(model, images)
  assert [a.name for a in attentions] == [
      "stage2_block1_halo", "stage3_block1_sasa", "stage4_block1_halo"]
  for attention in attentions:
    layer = model.backbone.get_layer(attention.name)
    probabilities = attention.probabilities
    assert probabilities.shape[:3] == (2, attention.queries.shape[0], layer.num_heads)
    assert probabilities.shape[3:] == (attention.queries.shape[1], layer.window_size**2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-6 * layer.window_size**2)
    # Queries in the image lie on the image (centres of the layer's input pixels).
    inside = attention.queries[attention.query_inside]
    assert inside.min() == attention.pixel / 2 and inside.max() < 32
  with pytest.raises(ValueError, match="no attention layer named stage9; the model has"):
    attention_maps.probe(model, images, ["stage9"])


def _uniform(window, pixel):
  """One block of one query at (0, 0) attending uniformly to a window×window square around it."""
  offsets = np.arange(window) - window // 2
  keys = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(1, -1, 2) * pixel
  return attention_maps.LayerAttention(
      name="uniform", probabilities=np.full([1, 1, 1, 1, window**2], 1.0 / window**2),
      queries=np.zeros([1, 1, 2]), keys=keys.astype(float), query_inside=np.ones([1, 1], bool),
      key_inside=np.ones([1, window**2], bool), window=window, pixel=pixel)


def test_mean_distance_of_uniform_attention_is_the_mean_offset_length():
  # 3×3 around the query at 2 px per pixel: 4 neighbours at 2 px, 4 at 2·√2 px, itself at 0.
  distance = attention_maps.mean_distance(_uniform(3, 2.0))
  np.testing.assert_allclose(distance, [(4 * 2 + 4 * 2 * np.sqrt(2)) / 9], rtol=1e-12)


def test_picture_is_written_with_one_cell_per_layer_query_and_head(tiny, tmp_path):
  model, images = tiny
  path = str(tmp_path / "maps.png")
  points = [(0.5, 0.5), (0.1, 0.9), (1.0, 0.0)]
  rows, columns = visualize.draw(model, images, path, ["stage2_block1_halo", "stage4_block1_halo"],
                                 points)
  # Stage 2 has a query near each point; stage 4 of a 32 px image has one query, drawn once.
  stage4 = attention_maps.probe(model, images, ["stage4_block1_halo"])[0]
  assert int(stage4.query_inside.sum()) == 1
  assert (rows, columns) == (3 + 1 + 1, 1 + 2)
  cell = attention_figure.CELL_INCHES * attention_figure.DPI
  assert Image.open(path).size == (columns * cell, rows * cell)


def test_points_are_checked():
  assert visualize.parse_points(["0.5,0.25"]) == [(0.5, 0.25)]
  assert visualize.parse_points([]) == list(visualize.DEFAULT_POINTS)
  with pytest.raises(ValueError, match=r"--points='1.5,0': fractions must lie in \[0, 1\]"):
    visualize.parse_points(["1.5,0"])
  with pytest.raises(ValueError, match="expected 'row,column'"):
    visualize.parse_points(["half"])


def _run(module_or_script, args, timeout=900):
  environment = dict(os.environ, PYTHONPATH=ROOT)
  environment.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user gets by default
  command = [sys.executable] + (["-m", module_or_script] if "." in module_or_script and
                                not module_or_script.endswith(".py") else [module_or_script])
  return subprocess.run(command + args, cwd=ROOT, env=environment, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("digits"))
  demo.make_digits_records(data_dir)
  model_dir = str(tmp_path_factory.mktemp("run"))
  bindings = [f"experiment.train_input_path = '{data_dir}/train-*'",
              f"experiment.eval_input_path = '{data_dir}/validation-*'"] + TINY_RUN
  result = _run(os.path.join(ROOT, "main.py"),
                ["--gin_file=demo.gin", f"--model_dir={model_dir}", "--num_cpu_devices=2"] +
                [f"--gin_bindings={b}" for b in bindings])
  return result, model_dir, data_dir


def test_console_is_one_line_per_loop_and_evaluation(tiny_run):
  result, model_dir, _ = tiny_run
  assert result.returncode == 0, result.stderr[-3000:]
  lines = (result.stdout + result.stderr).splitlines()
  assert len(lines) <= MAX_CONSOLE_LINES, "\n".join(lines)
  progress = [line for line in lines if line.startswith("step ")]
  assert [line.split(" |")[0] for line in progress] == [
      "step 2/6 (33.3%)", "step 4/6 (66.7%)", "step 6/6 (100.0%)"]
  assert len([line for line in lines if line.startswith("eval | accuracy")]) == 1
  assert not [line for line in lines if "output:" in line or "{'accuracy'" in line]
  log = open(os.path.join(model_dir, "main.log")).read()
  assert "output:" in log and "training_loss" in log  # Orbit's full dicts went to the log


def test_tensorboard_gets_attention_images_at_each_evaluation(tiny_run):
  _, model_dir, _ = tiny_run
  tags = set()
  for path in glob.glob(os.path.join(model_dir, "attention", "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  assert {"attention/image_0", "attention/image_1", "attention/image_2"} <= tags
  assert "attention_distance/stage2_block1_halo/head_1" in tags


def test_visualize_cli_draws_the_runs_checkpoint(tiny_run, tmp_path):
  _, model_dir, data_dir = tiny_run
  image = str(tmp_path / "digit.png")
  Image.fromarray(np.full([32, 32, 3], 128, np.uint8)).save(image)
  output = str(tmp_path / "maps.png")
  result = _run("official_halonet.visualize",
                [f"--model_dir={model_dir}", f"--image={image}", f"--output={output}",
                 "--layers=stage2_block1_halo", "--points=0.5,0.5"])
  assert result.returncode == 0, result.stderr[-3000:]
  cell = attention_figure.CELL_INCHES * attention_figure.DPI
  assert Image.open(output).size == (3 * cell, 2 * cell)
  missing = _run("official_halonet.visualize", [f"--model_dir={model_dir}",
                                                 f"--image={tmp_path / 'none.jpg'}"])
  assert missing.returncode == 2 and "error: --image=" in missing.stderr


def test_saved_model_gives_the_checkpoints_weights(tiny_run, tmp_path):
  from official_halonet.export import saved_model
  from official_halonet.training import runner
  _, model_dir, _ = tiny_run
  options = runner.RunOptions(gin_files=[], model_dir=model_dir)
  export_dir = saved_model.export_from_run(options, export_dir=str(tmp_path / "export"))
  _, from_checkpoint = visualize.load_model(model_dir=model_dir)
  _, from_export = visualize.load_model(saved_model=export_dir)
  for ours, theirs in zip(from_export.variables, from_checkpoint.variables):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
