"""The demo behind `make demo` (`python main.py --demo`): real images that ship with scikit-learn,
end to end on a CPU. It sits beside main.py because it uses every layer: data, training, export.

  1. scikit-learn's handwritten digits (1,797 real 8×8 scans, 10 classes) upsampled to 32×32 RGB
     and written as ImageNet-format TFRecords (official_halonet.data.convert), 1,497 for training
     and 300 held out, once, under <model_dir>/../data;
  2. gin/demo.gin: a tiny HaloNet (conv, halo, SASA and halo stages) trained with the paper's
     recipe shape (Nesterov SGD, warm-up + cosine, label smoothing) through the same main.py path
     a TPU pod runs, evaluated on the held-out 300;
  3. exported as a SavedModel with serving signatures;
  4. the attention maps of the trained model on three held-out digits drawn to
     demo_output/attention.png (official_halonet.visualize), and a summary printed.
"""
import dataclasses
import os
import time

import numpy as np

DEMO_DIR = "demo_output"
MODEL_DIR = os.path.join(DEMO_DIR, "model")
ATTENTION_PNG = "attention.png"
HELD_OUT = 300
CPU_DEVICES = 2  # logical CPU devices the demo mirrors over unless --num_cpu_devices says otherwise


def make_digits_records(data_dir: str, size: int = 32) -> None:
  """Writes train-* / validation-* TFRecords of the upsampled digits (skips if present)."""
  import tensorflow as tf
  from sklearn import datasets
  from official_halonet.data import convert
  if tf.io.gfile.glob(os.path.join(data_dir, "validation-*")):
    return
  digits = datasets.load_digits()
  images = (digits.images / 16.0 * 255.0).astype(np.float32)[..., None]
  images = tf.image.resize(images, [size, size], method="bilinear").numpy()
  images = np.repeat(np.clip(images, 0, 255).astype(np.uint8), 3, axis=-1)
  order = np.random.default_rng(0).permutation(len(images))
  held_out, train = order[:HELD_OUT], order[HELD_OUT:]
  names = [str(d) for d in range(10)]
  convert.convert_arrays(images[train], digits.target[train], data_dir, class_names=names,
                         split="train", num_shards=4, label_offset=0, image_format="PNG")
  convert.convert_arrays(images[held_out], digits.target[held_out], data_dir, class_names=names,
                         split="validation", num_shards=2, label_offset=0, shuffle=False,
                         image_format="PNG")


def run(options, verbose: bool = False) -> dict:
  """Prepares the data, trains and evaluates with gin/demo.gin, exports, draws the attention maps
  and prints a summary; returns the eval logs."""
  from official_halonet import data
  from official_halonet import visualize
  from official_halonet.export import saved_model
  from official_halonet.training import attention_summary
  from official_halonet import console
  from official_halonet.training import runner
  start = time.time()
  options = dataclasses.replace(options, num_cpu_devices=options.num_cpu_devices or CPU_DEVICES)
  runner.configure_cpu_devices(options.num_cpu_devices)  # before the records touch TensorFlow
  model_dir = options.model_dir or MODEL_DIR
  data_dir = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "data")
  make_digits_records(data_dir)
  bindings = [f"experiment.train_input_path = '{data_dir}/train-*'",
              f"experiment.eval_input_path = '{data_dir}/validation-*'"]
  options = dataclasses.replace(
      options, gin_files=list(options.gin_files) or ["demo.gin"], model_dir=model_dir,
      mode="train_and_eval", gin_bindings=bindings + list(options.gin_bindings))
  log_file = console.configure_logging(console.log_path(model_dir), verbose)
  logs = runner.run(options)
  log_file = console.settle(model_dir)  # the run moved its log into model_dir
  seconds = time.time() - start
  export_dir = saved_model.export_from_run(options, export_dir=os.path.join(model_dir, "export"))
  picture = os.path.join(os.path.dirname(os.path.abspath(model_dir)), ATTENTION_PNG)
  config, model = visualize.load_model(saved_model=export_dir)
  images = attention_summary.fixed_images(data.build_dataset(config.task.validation_data), 3)
  visualize.draw(model, images, picture)
  print(f"demo | validation accuracy {logs.get('accuracy', float('nan')):.4f} on "
        f"{int(logs.get('eval_examples', 0))} held-out digits | trained in {seconds:.0f} s\n"
        f"demo | SavedModel: {export_dir}\n"
        f"demo | attention maps: {picture} (TensorBoard: tensorboard --logdir {model_dir})\n"
        f"demo | full log: {log_file}", flush=True)
  return logs
