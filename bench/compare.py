"""Side-by-side speed in one run: the machine's float32 matmul roofline, this project's models
(forward, train step, and optionally the train step with recompute_attention) and, where a Python
with torch + timm is given, timm's models beside them.

    python bench/compare.py                                   # h1, halonet50, resnet50; batch 8 at 256 px
    python bench/compare.py --models=h1 --repeats=3 --timm_python=/tmp/timm-venv/bin/python
    python bench/compare.py --models=h0,h1 --modes=forward --batch=1
    python bench/compare.py --models=h1 --modes=train,train_recompute   # memory for time

Every row is measured in its own subprocess (so its memory is its own), one after the other, and the
roofline (an XLA-compiled 2048×2048 float32 matmul) is measured before and after them; each row's
"% roofline" divides its achieved GFLOP/s by the mean of the two roofline measurements.

  img/s      batch / median wall time of --repeats calls after --warmup calls (tf.function with
             jit_compile=True; timm: eager PyTorch, eval mode + no_grad for forward)
  GFLOP/img  analytic multiply-add FLOPs (2 per MAC) of the forward pass from the layers' shapes:
             convolutions, dense layers, and for halo attention its q/k/v projections, q·k, the
             relative-position logits and the value sum at the block-padded query count. Softmax,
             normalisation and elementwise ops are not counted. A train step counts 3× forward.
  peak MiB   the process's resident high-water mark during the timed calls minus its resident size
             just before them (/proc/self/clear_refs resets the mark): the step's working memory
             beyond weights, optimizer state and compiled code. With the BFC allocator the TF rows
             read the same quantity from TensorFlow's allocator (its peak minus what it held
             before), since a pooling allocator keeps its memory resident between steps.

TensorFlow's default CPU allocator returns large buffers to the OS, so every step page-faults its
XLA temporaries in afresh (a 205 MB logits tensor: ~50,000 faults). --bfc_allocator (the default,
as in main.py) sets TF_CPU_ALLOCATOR_USE_BFC=true in the TensorFlow children, which keeps them in a
pool; --nobfc_allocator measures TensorFlow's default allocator.

The table goes to stdout and the rows (with machine load and CPU count) to --out as JSON. Flags are
absl's (official_halonet.data.command_line, like the data tools); a row's child process gets its
settings as JSON and needs only the standard library to start, so --timm_python may be a Python
with torch and timm but no absl or TensorFlow.
"""
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = ("h1", "halonet50", "resnet50")
TIMM_NAMES = {"h1": "halonet_h1", "resnet50": "resnet50", "halonet50": "halonet50ts"}
MODES = ("forward", "train", "train_recompute")  # train_recompute: recompute_attention=True
DEFAULT_MODES = ("forward", "train")


# -- memory -------------------------------------------------------------------------------------

def _rss_kib(field: str) -> int:
  """VmRSS / VmHWM of this process in KiB."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> int:
  """Resets the resident high-water mark to the current resident size and returns that size."""
  pathlib.Path("/proc/self/clear_refs").write_text("5")
  return _rss_kib("VmRSS")


def _bfc_allocator(env=os.environ) -> bool:
  """Whether TensorFlow's CPU allocator under environment `env` is its BFC pool."""
  return env.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true")


def _timed(call, warmup: int, repeats: int, pooled: bool = False):
  """(median seconds, min seconds, peak MiB above the memory in use before the timed calls):
  resident memory, or with `pooled` the bytes TensorFlow's CPU allocator holds."""
  for _ in range(warmup):
    call()
  base = _reset_peak()
  if pooled:
    import tensorflow as tf
    tf.config.experimental.reset_memory_stats("CPU:0")
    held = tf.config.experimental.get_memory_info("CPU:0")["current"]
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  if pooled:
    peak = (tf.config.experimental.get_memory_info("CPU:0")["peak"] - held) / 2**20
  else:
    peak = (_rss_kib("VmHWM") - base) / 1024
  return statistics.median(times), min(times), peak


# -- analytic FLOPs -----------------------------------------------------------------------------

def _blocked(size: int, block: int) -> int:
  return -(-size // block) * block


def halo_attention_flops(layer, input_shape) -> int:
  """Forward FLOPs of one HaloAttention call on one image of `input_shape` [H, W, C]."""
  height, width, channels = input_shape
  s, b, n = layer.query_stride, layer.block_size, layer.num_heads
  bq, win = b // s, layer.window_size
  d, dv = layer.head_dim, layer.value_dim // n
  q_h, q_w = -(-height // s), -(-width // s)
  queries = _blocked(q_h, bq) * _blocked(q_w, bq)  # computed, including block padding
  flops = 2 * q_h * q_w * channels * layer.key_dim  # query projection
  flops += 2 * height * width * channels * (layer.key_dim + layer._value_projection_width())
  flops += 2 * queries * n * win * win * (d + dv)  # q·k and the weighted value sum
  if layer.rel_pos != "none":
    width_per_axis = d // 2 if layer.rel_pos == "split" else d
    flops += 2 * queries * n * 2 * win * width_per_axis  # q · r_h, q · r_w
  return flops


def model_flops(model) -> int:
  """Forward FLOPs per image of a Keras model, from its layers' input and output shapes."""
  import tf_keras
  from official_halonet.layers import HaloAttention

  total = 0
  for layer in model.submodules:
    if not isinstance(layer, tf_keras.layers.Layer) or not layer._inbound_nodes:
      continue
    if isinstance(layer, HaloAttention):
      total += halo_attention_flops(layer, layer.input_shape[1:])
    elif isinstance(layer, tf_keras.layers.Conv2D):
      out = layer.output_shape
      k_h, k_w, c_in, c_out = layer.kernel.shape
      total += 2 * out[1] * out[2] * k_h * k_w * c_in * c_out
    elif isinstance(layer, tf_keras.layers.Dense) and len(layer.input_shape) == 2:
      total += 2 * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
  return total


# -- children: one measurement each --------------------------------------------------------------

def run_roofline(args) -> dict:
  import tensorflow as tf
  n = 2048
  a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
  fn = tf.function(lambda x, y: tf.matmul(x, y), jit_compile=True)
  median, best, _ = _timed(lambda: fn(a, b).numpy(), args.warmup, max(args.repeats, 5))
  return dict(impl="xla", model="matmul_2048", mode="matmul", gflop=2 * n**3 / 1e9,
              gflops=2 * n**3 / 1e9 / median, median_s=median, min_s=best)


def run_project(args) -> dict:
  import official_halonet  # noqa: F401
  import tensorflow as tf
  import tf_keras
  from official_halonet import models

  model = models.build(args.model, num_classes=1000, image_size=args.image_size,
                       recompute_attention=args.mode == "train_recompute")
  x = tf.random.uniform([args.batch, args.image_size, args.image_size, 3])
  labels = tf.random.uniform([args.batch], 0, 1000, dtype=tf.int32)
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
  optimizer.build(model.trainable_variables)

  if args.mode == "forward":
    fn = tf.function(lambda t: model(t, training=False), jit_compile=True)
    call = lambda: fn(x).numpy()
  else:
    def step(t, y):
      with tf.GradientTape() as tape:
        logits = model(t, training=True)
        loss = tf.reduce_mean(
            tf_keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
      grads = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))
      return loss
    fn = tf.function(step, jit_compile=True)
    call = lambda: fn(x, labels).numpy()
  median, best, peak = _timed(call, args.warmup, args.repeats, _bfc_allocator())
  forward = model_flops(model) / 1e9
  gflop = forward * (1 if args.mode == "forward" else 3)  # recomputation is not counted
  return dict(impl="tf-xla", model=args.model, mode=args.mode, batch=args.batch,
              image_size=args.image_size, gflop_per_image=gflop, median_s=median, min_s=best,
              img_s=args.batch / median, gflops=gflop * args.batch / median, peak_mib=peak)


def run_timm(args) -> dict:
  import torch
  import timm

  torch.set_num_threads(os.cpu_count())
  name = TIMM_NAMES[args.model]
  model = timm.create_model(name, num_classes=1000)
  x = torch.rand(args.batch, 3, args.image_size, args.image_size)
  labels = torch.randint(0, 1000, (args.batch,))
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  if args.mode == "forward":
    model.eval()

    def call():
      with torch.no_grad():
        model(x)
  else:
    model.train()

    def call():
      optimizer.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(model(x), labels).backward()
      optimizer.step()
  median, best, peak = _timed(call, args.warmup, args.repeats)
  return dict(impl="timm", model=args.model, timm_name=name, mode=args.mode, batch=args.batch,
              image_size=args.image_size, median_s=median, min_s=best, img_s=args.batch / median,
              peak_mib=peak)


# -- parent ---------------------------------------------------------------------------------------

def _child(python, role, settings, env):
  proc = subprocess.run([python, __file__, CHILD, json.dumps(dict(settings, role=role))],
                        capture_output=True, text=True, env=env)
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not line:
    lines = (proc.stderr + proc.stdout).strip().splitlines()
    tail = [l for l in lines if "Error" in l][-1:] or lines[-1:] or ["no output"]
    return dict(error=tail[0][:300])
  return json.loads(line[0][len("RESULT "):])


def _row_text(r, roofline):
  name = f"{r.get('impl')} {r.get('timm_name', r.get('model'))}"
  if "error" in r:
    return f"| {name} | {r.get('mode')} | failed: {r['error']} |||||"
  gflop = r.get("gflop_per_image")
  gflops = r.get("gflops")
  pct = f"{100 * gflops / roofline:.0f}%" if gflops else "–"
  return (f"| {name} | {r['mode']} | {r['img_s']:.2f} | {gflop:.2f} | {gflops:.1f} | {pct} | "
          f"{r['peak_mib']:.0f} |" if gflop else
          f"| {name} | {r['mode']} | {r['img_s']:.2f} | – | – | – | {r['peak_mib']:.0f} |")


def _define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_list("models", list(DEFAULT_MODELS), "Named models, comma-separated.",
                    flag_values=values)
  flags.DEFINE_list("modes", list(DEFAULT_MODES),
                    f"Steps to time, comma-separated: {', '.join(MODES)}.", flag_values=values)
  flags.register_validator("modes", lambda modes: set(modes) <= set(MODES),
                           f"every entry must be one of {', '.join(MODES)}", flag_values=values)
  flags.DEFINE_integer("batch", 8, "Images per call.", flag_values=values)
  flags.DEFINE_integer("image_size", 256, "Input side in pixels.", flag_values=values)
  flags.DEFINE_integer("repeats", 5, "Timed calls (the median is reported).", flag_values=values)
  flags.DEFINE_integer("warmup", 2, "Untimed calls first.", flag_values=values)
  flags.DEFINE_string("timm_python", None, "A Python with torch and timm (e.g. /tmp/timm-venv/"
                      "bin/python); timm rows are skipped without it.", flag_values=values)
  flags.DEFINE_boolean("bfc_allocator", True, "TensorFlow children pool their CPU memory "
                       "(TF_CPU_ALLOCATOR_USE_BFC=true, as main.py sets it) instead of returning it "
                       "to the OS after every step; --nobfc_allocator for TensorFlow's default.",
                       flag_values=values)
  flags.DEFINE_string("out", str(ROOT / "bench" / "results" / "compare.json"),
                      "Where the JSON rows go.", flag_values=values)


def main(argv=None):
  from official_halonet.data import command_line
  args = command_line.parse(_define_flags, argv, prog="python bench/compare.py",
                            description=__doc__.split("\n\n")[0])
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env["TF_CPU_ALLOCATOR_USE_BFC"] = "true" if args.bfc_allocator else "false"
  allocator = "bfc" if _bfc_allocator(env) else "default"
  timm_env = dict(env, PYTHONPATH="/tmp/timm-tvstub")  # timm_env.sh's torchvision stand-in
  shared = dict(batch=args.batch, image_size=args.image_size, repeats=args.repeats,
                warmup=args.warmup)
  load_before = os.getloadavg()
  roof = [_child(sys.executable, "roofline", shared, env)]
  rows = []
  for model in args.models:
    for mode in args.modes:
      rows.append(_child(sys.executable, "project", dict(shared, model=model, mode=mode), env))
      rows[-1].setdefault("model", model), rows[-1].setdefault("mode", mode)
      rows[-1].setdefault("impl", "tf-xla")
      if args.timm_python and model in TIMM_NAMES and mode in DEFAULT_MODES:
        rows.append(_child(args.timm_python, "timm", dict(shared, model=model, mode=mode),
                           timm_env))
        rows[-1].setdefault("model", model), rows[-1].setdefault("mode", mode)
        rows[-1].setdefault("impl", "timm")
      print(f"  measured {rows[-1].get('impl')} {model} {mode}", file=sys.stderr, flush=True)
  roof.append(_child(sys.executable, "roofline", shared, env))
  good = [r["gflops"] for r in roof if "gflops" in r]
  roofline = statistics.mean(good) if good else float("nan")
  # timm's models differ from ours in detail; its rows borrow our FLOPs only for the same model.
  ours = {(r["model"], r["mode"]): r for r in rows if r.get("impl") == "tf-xla" and "error" not in r}
  for r in rows:
    if r.get("impl") == "timm" and "error" not in r and (r["model"], r["mode"]) in ours:
      r["gflop_per_image"] = ours[(r["model"], r["mode"])]["gflop_per_image"]
      r["gflops"] = r["gflop_per_image"] * r["img_s"]
  load_after = os.getloadavg()

  print(f"\nCPU: {os.cpu_count()} cores, load average {load_before[0]:.2f} before / "
        f"{load_after[0]:.2f} after; batch {args.batch} at {args.image_size} px, median of "
        f"{args.repeats}; TensorFlow CPU allocator: {allocator}\n")
  each = " / ".join(f"{r.get('gflops', float('nan')):.1f}" for r in roof)
  print(f"float32 matmul 2048², XLA: {roofline:.1f} GFLOP/s ({each} before / after)\n")
  print("| model | step | img/s | GFLOP/img | GFLOP/s | % roofline | peak MiB |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(_row_text(r, roofline))
  ratios = {}
  for mode in args.modes:
    a, b = ours.get(("halonet50", mode)), ours.get(("resnet50", mode))
    if a and b:
      ratios[f"halonet50_over_resnet50_{mode}_time"] = a["median_s"] / b["median_s"]
      print(f"\nHaloNet-50 / ResNet-50 {mode} time: {a['median_s'] / b['median_s']:.2f}")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(machine=platform.platform(), cpus=os.cpu_count(),
                                 tf_cpu_allocator=allocator,
                                 load_before=load_before, load_after=load_after,
                                 roofline_gflops=roofline, roofline_runs=roof, rows=rows,
                                 ratios=ratios), indent=2))
  print(f"\nwrote {out}")


# A row's child process gets `compare.py CHILD '<settings as JSON>'` and prints one RESULT line.
CHILD = "--child_settings_json"
ROLES = dict(roofline=run_roofline, project=run_project, timm=run_timm)

if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == CHILD:
    settings = json.loads(sys.argv[2])
    print("RESULT " + json.dumps(ROLES[settings.pop("role")](SimpleNamespace(**settings))))
  else:
    main()
