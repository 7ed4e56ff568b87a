"""Draws where a trained model's attention heads look on one image.

    python -m official_halonet.visualize --model_dir=/runs/h0 --image=photo.jpg --output=maps.png
    python -m official_halonet.visualize --checkpoint=/runs/h0/ckpt-5000 --model_dir=/runs/h0 ...
    python -m official_halonet.visualize --saved_model=demo_output/model/export --image=... \\
        --layers=stage2_block1_halo,stage4_block1_halo --points=0.5,0.5 --points=0.2,0.8

The model is rebuilt from the run's configuration (its gin files, or the operative_config.gin in
--model_dir / --saved_model) and restored strictly from the checkpoint or the SavedModel's
variables; the image is preprocessed as evaluation does. The PNG holds, for each chosen layer and
query point, the image with the query and its window and one heat map per head (see
models/attention_figure.py), and the mean attention distance per layer and head.
"""
import dataclasses
import os
import sys
from typing import List, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import official_halonet  # noqa: F401,E402  (selects tf_keras before TensorFlow is imported)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

DEFAULT_POINTS = ((0.5, 0.5), (0.25, 0.25))


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so that importing this module (the demo
  does, from main.py) does not collide with main.py's --model_dir / --checkpoint."""
  flags.DEFINE_string("image", "", "The image to look at (JPEG / PNG / GIF / BMP).")
  flags.DEFINE_string("output", "attention.png", "Where to write the PNG.")
  flags.DEFINE_string("model_dir", "", "The run: its operative_config.gin and latest checkpoint.")
  flags.DEFINE_string("checkpoint", "", "A checkpoint prefix instead of the latest in --model_dir.")
  flags.DEFINE_string("saved_model", "", "A SavedModel written by main.py --mode=export.")
  flags.DEFINE_multi_string("gin_file", [], "The run's gin files (default: its operative config).")
  flags.DEFINE_multi_string("gin_bindings", [], "The run's gin bindings.")
  flags.DEFINE_list("layers", [], "Attention layers to draw (default: all), e.g. stage2_block1_halo.")
  flags.DEFINE_multi_string("points", [], "Query points as 'row,column' fractions of the image "
                            "(default: the centre and (0.25, 0.25)).")
  flags.DEFINE_bool("verbose", False, "Show TensorFlow's and absl's log lines on the console "
                    "(by default they go to <temp>/official_halonet/visualize.log).")


def parse_points(values: Sequence[str]) -> List[Tuple[float, float]]:
  """'0.5,0.25' -> (0.5, 0.25); each fraction must lie in [0, 1]."""
  points = []
  for value in values:
    try:
      row, column = (float(part) for part in value.split(","))
    except ValueError:
      raise ValueError(f"--points={value!r}: expected 'row,column' fractions such as 0.5,0.5"
                       ) from None
    if not (0 <= row <= 1 and 0 <= column <= 1):
      raise ValueError(f"--points={value!r}: fractions must lie in [0, 1]")
    points.append((row, column))
  return points or list(DEFAULT_POINTS)


def _assign_saved_model_weights(model, saved_model: str) -> None:
  """Copies the exported classifier's variables (the export writes them as one list, in the
  model's variable order; already EMA-averaged) into `model`, checking shapes and variable kinds
  (layer names may differ by Keras' uniquifying suffix, dense vs dense_1)."""
  import tensorflow as tf
  from official_halonet.training import run_options
  loaded = tf.saved_model.load(saved_model)
  # Exports list them as model_variables; earlier ones only through Keras's traces of the model.
  exported = list(loaded.model_variables if hasattr(loaded, "model_variables") else
                  loaded.model.variables)
  ours = model.variables
  if len(exported) != len(ours):
    raise run_options.RunError(
        f"SavedModel {saved_model} holds {len(exported)} model variables, the model built from "
        f"its operative_config.gin has {len(ours)}")
  for source, target in zip(exported, ours):
    if source.name.split("/")[-1] != target.name.split("/")[-1] or source.shape != target.shape:
      raise run_options.RunError(
          f"SavedModel {saved_model}: variable {source.name} {source.shape} does not match the "
          f"model's {target.name} {target.shape}")
  for source, target in zip(exported, ours):
    target.assign(source)


def load_model(model_dir: str = "", checkpoint: str = "", saved_model: str = "",
               gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = ()):
  """(ExperimentConfig, model with the trained weights) of a run or of an exported SavedModel."""
  from official_halonet.export import saved_model as export
  from official_halonet.training import run_options
  if saved_model:
    options = run_options.RunOptions(gin_files=gin_files, gin_bindings=gin_bindings,
                                model_dir=saved_model)
    config, _ = export.load_config(options)
    model = export.build_model(config)
    _assign_saved_model_weights(model, saved_model)
    return config, model
  options = run_options.RunOptions(gin_files=gin_files, gin_bindings=gin_bindings,
                              model_dir=model_dir)
  run = export.restore_run(options, checkpoint)
  return run.config, run.model


def preprocess(config, image_bytes: bytes):
  """[1, S, S, 3] float32: the image as evaluation sees it (crop, resize, normalisation)."""
  import tensorflow as tf
  from official_halonet.data import image_parser
  eval_data = dataclasses.replace(config.task.validation_data, is_training=False, dtype="float32")
  return image_parser.ImageParser(eval_data)(tf.constant(image_bytes))[None]


def draw(model, images, path: str, layers: Sequence[str] = (),
         points: Sequence[Tuple[float, float]] = DEFAULT_POINTS, index: int = 0) -> Tuple[int, int]:
  """Writes the attention grid of image `index` of `images` (normalised) to `path` as PNG;
  returns the grid's (rows, columns)."""
  from official_halonet.models import attention_figure
  from official_halonet.models import attention_maps
  attentions = attention_maps.probe(model, images, layers)
  image = attention_figure.displayable(images)[index]
  fig = attention_figure.figure(image, attentions, points, index)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, "wb") as f:
    f.write(attention_figure.png_bytes(fig))
  return attention_figure.grid_shape(attentions, points, *image.shape[:2])


def main(argv):
  del argv
  flag = flags.FLAGS
  from official_halonet import console
  console.quiet(console.tool_log_path("visualize"), flag.verbose)
  from official_halonet.training import run_options
  try:
    if not flag.image or not os.path.isfile(flag.image):
      raise ValueError(f"--image={flag.image!r}: no such file")
    if not (flag.model_dir or flag.checkpoint or flag.saved_model):
      raise ValueError("give --model_dir (and optionally --checkpoint) or --saved_model")
    points = parse_points(flag.points)
    config, model = load_model(flag.model_dir, flag.checkpoint, flag.saved_model,
                               flag.gin_file, flag.gin_bindings)
    with open(flag.image, "rb") as f:
      images = preprocess(config, f.read())
    rows, columns = draw(model, images, flag.output, flag.layers, points)
  except (ValueError, run_options.RunError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  print(f"attention maps ({rows - 1} rows of query maps + distances, {columns} columns) "
        f"written to {flag.output}", flush=True)
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
