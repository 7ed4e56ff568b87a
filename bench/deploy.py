"""Every deploy runtime side by side on this CPU: img/s at batch 1 and 8 and the largest absolute
logit difference from the Keras model, for one model converted once to every format.

    python bench/deploy.py                          # h1 at 256 px, random weights
    python bench/deploy.py --model=halonet26t --batches=1,8 --repeats=5

Rows: the Keras model as a tf.function (graph) and XLA-compiled (jit_compile=True); LiteRT
(builtin ops only, batch 1: a batch of 8 is eight invocations); ONNX Runtime; OpenVINO float32 and
with its bf16 inference-precision hint. img/s is batch / median wall time of --repeats calls after
one warm-up call; the machine load (/proc/loadavg) is recorded beside the rows, since the numbers
are only comparable on an idle machine. The table goes to stdout, the rows to --out as JSON.
Flags are absl's (official_halonet.data.command_line, like the data tools).
"""
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _define_flags(values: flags.FlagValues) -> None:
  from official_halonet import models
  flags.DEFINE_string("model", "h1", "A name from official_halonet.models.MODELS.",
                      flag_values=values)
  flags.register_validator("model", lambda name: name in models.MODELS,
                           "must be a name from official_halonet.models.MODELS",
                           flag_values=values)
  flags.DEFINE_integer("image_size", 0, "Input side (0: the model's own).", flag_values=values)
  flags.DEFINE_list("batches", ["1", "8"], "Batch sizes to time.", flag_values=values)
  flags.DEFINE_integer("repeats", 5, "Timed calls per row (median reported).", flag_values=values)
  flags.DEFINE_string("out", str(ROOT / "bench" / "results" / "deploy.json"), "JSON rows.",
                      flag_values=values)


def _images_per_second(call, images, repeats: int):
  """(img/s, logits) of `call` on `images`: batch / median time after one warm-up call."""
  logits = call(images)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call(images)
    times.append(time.perf_counter() - start)
  return len(images) / statistics.median(times), logits


def _runtimes(model, size: int, work_dir: str):
  """{row name: images -> logits} for every runtime, each converted once."""
  import tensorflow as tf
  from official_halonet.export import formats, litert, onnx_model, openvino_model
  function = formats.logits_function(model)
  xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
  paths = {name: os.path.join(work_dir, formats.FILES[name]) for name in formats.FILES}
  os.makedirs(os.path.dirname(paths["openvino"]), exist_ok=True)
  with open(paths["tflite"], "wb") as f:
    f.write(litert.convert(function, size))
  onnx_model.convert(function, size, paths["onnx"])
  openvino_model.convert(paths["onnx"], paths["openvino"])
  import onnxruntime
  session = onnxruntime.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
  compiled = {p: openvino_model.compile_model(paths["openvino"], p) for p in ("f32", "bf16")}
  return {
      "Keras graph (tf.function)": lambda x: function(x).numpy(),
      "Keras XLA (jit_compile)": lambda x: xla(x).numpy(),
      "LiteRT, builtin ops (batch-1 file)": litert.load(paths["tflite"]),
      "ONNX Runtime": lambda x: session.run(None, {onnx_model.INPUT: x})[0],
      "OpenVINO f32": lambda x: compiled["f32"](x)[0],
      "OpenVINO bf16 hint": lambda x: compiled["bf16"](x)[0],
  }


def main(argv=None):
  import official_halonet  # noqa: F401
  import numpy as np
  from official_halonet import models
  from official_halonet.data import command_line
  args = command_line.parse(_define_flags, argv, prog="python bench/deploy.py",
                            description=__doc__.split("\n\n")[0])
  size = args.image_size or models.get_spec(args.model).image_size
  model = models.build(args.model, num_classes=1000, image_size=size)
  batches = [int(b) for b in args.batches]
  rng = np.random.RandomState(0)
  inputs = {b: rng.standard_normal([b, size, size, 3]).astype(np.float32) for b in batches}
  reference = {b: model(inputs[b], training=False).numpy() for b in batches}
  rows = []
  print(f"| runtime ({args.model}, {size} px, CPU) | "
        + " | ".join(f"img/s batch {b}" for b in batches) + " | max abs logit diff |")
  print("|---|" + "---|" * len(batches) + "---|")
  with tempfile.TemporaryDirectory() as work_dir:
    for name, call in _runtimes(model, size, work_dir).items():
      row = {"runtime": name, "img_per_s": {}, "max_abs_logit_diff": 0.0}
      for b in batches:
        speed, logits = _images_per_second(call, inputs[b], args.repeats)
        row["img_per_s"][b] = round(speed, 2)
        diff = float(np.max(np.abs(np.asarray(logits) - reference[b])))
        row["max_abs_logit_diff"] = max(row["max_abs_logit_diff"], diff)
      rows.append(row)
      print(f"| {name} | " + " | ".join(f"{row['img_per_s'][b]:.2f}" for b in batches)
            + f" | {row['max_abs_logit_diff']:.2g} |", flush=True)
  load = open("/proc/loadavg").read().split()[:3]
  print(f"load average during the run: {' '.join(load)} on {os.cpu_count()} CPUs")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(model=args.model, image_size=size, device="CPU", load=load,
                                 cpus=os.cpu_count(), rows=rows), indent=2))


if __name__ == "__main__":
  main()
