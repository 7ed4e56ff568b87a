"""Benchmark: HaloAttention against a naive per-pixel-window version of the same math and against
global attention, at realistic feature-map sizes.

    python bench/attention.py                      # default cases, table + JSON
    python bench/attention.py --batch 8 --runs 20 --out /tmp/attention.json
    python bench/attention.py --cases=32x32x256 --impls=halo,global --backward --noxla

Each (case, implementation) runs in a fresh subprocess so its peak memory is its own: on a GPU the
TensorFlow allocator's peak (tf.config.experimental.get_memory_info), on the CPU the growth of the
process's peak resident set (ru_maxrss) over the baseline after inputs and weights exist.
Time is the median of --runs calls after --warmup calls, under tf.function(jit_compile=True)
(XLA, as on TPU) unless --noxla; --backward also differentiates a scalar loss with respect to the
input and weights. Flags are absl's (official_halonet.data.command_line, like the data tools).
"""
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMPLEMENTATIONS = ("halo", "naive_windows", "global")
DEFAULT_CASES = ("64x64x128", "32x32x256")


def _naive_windows(layer, x):
  """The same blocked-window math, windows formed per pixel with a gather (memory-hungry)."""
  import numpy as np
  import tensorflow as tf
  b, h, n = layer.block_size, layer.halo_size, layer.num_heads
  d, dv = layer.key_dim // n, layer.value_dim // n
  win = b + 2 * h
  batch, height, width, _ = x.shape
  q = tf.reshape(layer.query(x), [batch, height * width, n, d])
  kv = layer.key_value(x)
  padded = tf.pad(kv, [[0, 0], [h, h + (-height) % b], [h, h + (-width) % b], [0, 0]])
  pw = padded.shape[2]
  rows, cols = np.divmod(np.arange(height * width), width)
  top, left = (rows // b) * b, (cols // b) * b  # window start in padded coordinates
  wr, wc = np.divmod(np.arange(win * win), win)
  index = (top[:, None] + wr[None]) * pw + (left[:, None] + wc[None])  # [HW, win²]
  windows = tf.gather(tf.reshape(padded, [batch, -1, kv.shape[-1]]), index, axis=1)
  k = tf.reshape(windows[..., :layer.key_dim], [batch, height * width, win * win, n, d])
  v = tf.reshape(windows[..., layer.key_dim:], [batch, height * width, win * win, n, dv])
  logits = tf.einsum("bpnd,bpknd->bpnk", q, k) * d**-0.5
  off_h = (top[:, None] + wr[None] - h) - rows[:, None] + win - 1
  off_w = (left[:, None] + wc[None] - h) - cols[:, None] + win - 1
  rel = (tf.einsum("bpnd,pkd->bpnk", q, tf.gather(layer.rel_pos_h, off_h)) +
         tf.einsum("bpnd,pkd->bpnk", q, tf.gather(layer.rel_pos_w, off_w)))
  weights = tf.nn.softmax(logits + rel, axis=-1)
  return tf.reshape(tf.einsum("bpnk,bpknd->bpnd", weights, v), [batch, height, width, n * dv])


def _global(layer, x):
  """Every pixel attends to every pixel, with the same factorized relative logits."""
  import numpy as np
  import tensorflow as tf
  n = layer.num_heads
  d, dv = layer.key_dim // n, layer.value_dim // n
  batch, height, width, _ = x.shape
  q = tf.reshape(layer.query(x), [batch, height * width, n, d])
  kv = tf.reshape(layer.key_value(x), [batch, height * width, -1])
  k = tf.reshape(kv[..., :layer.key_dim], [batch, height * width, n, d])
  v = tf.reshape(kv[..., layer.key_dim:], [batch, height * width, n, dv])
  logits = tf.einsum("bqnd,bknd->bnqk", q, k) * d**-0.5
  # Tables for a window spanning the whole map: one row per offset in [-(H-1), H-1] (and W).
  table_h = tf.random.normal([2 * height - 1, d])
  table_w = tf.random.normal([2 * width - 1, d])
  grid = [batch, n, height, width]
  by_h = tf.reshape(tf.einsum("bqnd,rd->bnqr", q, table_h), grid + [-1])  # [B, N, H, W, 2H-1]
  by_w = tf.reshape(tf.einsum("bqnd,rd->bnqr", q, table_w), grid + [-1])
  off_h = np.arange(height)[None, :] - np.arange(height)[:, None] + height - 1  # [H_q, H_k]
  off_w = np.arange(width)[None, :] - np.arange(width)[:, None] + width - 1
  rel_h = tf.einsum("bnijr,ikr->bnijk", by_h, tf.one_hot(off_h, 2 * height - 1))
  rel_w = tf.einsum("bnijr,jlr->bnijl", by_w, tf.one_hot(off_w, 2 * width - 1))
  rel = rel_h[..., :, None] + rel_w[..., None, :]  # [B, N, H, W, H, W]
  logits += tf.reshape(rel, [batch, n, height * width, height * width])
  weights = tf.nn.softmax(logits, axis=-1)
  return tf.reshape(tf.einsum("bnqk,bknd->bqnd", weights, v), [batch, height, width, n * dv])


def run_one(args) -> dict:
  """Runs one (case, implementation) in this process and returns its measurements."""
  import official_halonet  # noqa: F401
  import tensorflow as tf
  from official_halonet.layers import HaloAttention

  height, width, channels = (int(v) for v in args.case.split("x"))
  gpu = bool(tf.config.list_physical_devices("GPU"))
  layer = HaloAttention(num_heads=args.heads, key_dim=channels, value_dim=channels,
                        block_size=args.block, halo_size=args.halo)
  x = tf.random.normal([args.batch, height, width, channels])
  layer(x)
  fn = {"halo": lambda t: layer(t), "naive_windows": lambda t: _naive_windows(layer, t),
        "global": lambda t: _global(layer, t)}[args.impl]

  if args.backward:
    def step(t):
      with tf.GradientTape() as tape:
        tape.watch(t)
        loss = tf.reduce_sum(tf.square(fn(t)))
      grads = tape.gradient(loss, [t] + layer.trainable_variables)
      # The global baseline has its own position tables, so the layer's get no gradient.
      return [tf.convert_to_tensor(g) for g in grads if g is not None]
  else:
    step = fn
  compiled = tf.function(step, jit_compile=args.xla)
  if gpu:
    tf.config.experimental.reset_memory_stats("GPU:0")
  base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  for _ in range(args.warmup):
    tf.nest.map_structure(lambda t: t.numpy(), compiled(x))
  times = []
  for _ in range(args.runs):
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), compiled(x))
    times.append(time.perf_counter() - start)
  if gpu:
    peak_mib = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
  else:
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
  return dict(case=args.case, impl=args.impl, batch=args.batch, block=args.block, halo=args.halo,
              heads=args.heads, backward=args.backward, xla=args.xla,
              device="GPU" if gpu else "CPU", median_ms=1000 * statistics.median(times),
              min_ms=1000 * min(times), runs=args.runs, peak_mib=peak_mib)


def _define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_list("cases", list(DEFAULT_CASES), "HxWxC maps, comma-separated.",
                    flag_values=values)
  flags.DEFINE_list("impls", list(IMPLEMENTATIONS),
                    f"Implementations to time, comma-separated: {', '.join(IMPLEMENTATIONS)}.",
                    flag_values=values)
  flags.register_validator("impls", lambda impls: set(impls) <= set(IMPLEMENTATIONS),
                           f"every entry must be one of {', '.join(IMPLEMENTATIONS)}",
                           flag_values=values)
  flags.DEFINE_integer("batch", 1, "Batch size.", flag_values=values)
  flags.DEFINE_integer("block", 8, "Block size b.", flag_values=values)
  flags.DEFINE_integer("halo", 3, "Halo size h.", flag_values=values)
  flags.DEFINE_integer("heads", 8, "Attention heads.", flag_values=values)
  flags.DEFINE_integer("runs", 10, "Timed calls (the median is reported).", flag_values=values)
  flags.DEFINE_integer("warmup", 2, "Untimed calls first.", flag_values=values)
  flags.DEFINE_bool("backward", False, "Time forward + backward.", flag_values=values)
  flags.DEFINE_bool("xla", True, "Compile with jit_compile (--noxla: plain tf.function).",
                    flag_values=values)
  flags.DEFINE_string("out", str(ROOT / "bench" / "results" / "attention.json"),
                      "Where the JSON results go.", flag_values=values)


def main(argv=None):
  from official_halonet.data import command_line
  args = command_line.parse(_define_flags, argv, prog="python bench/attention.py",
                            description=__doc__.split("\n\n")[0])
  results = []
  shared = dict(batch=args.batch, block=args.block, halo=args.halo, heads=args.heads,
                runs=args.runs, warmup=args.warmup, backward=args.backward, xla=args.xla)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  for case in args.cases:
    for impl in args.impls:
      child = json.dumps(dict(shared, case=case, impl=impl))
      proc = subprocess.run([sys.executable, __file__, CHILD, child], capture_output=True,
                            text=True, env=env)
      line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not line:
        lines = (proc.stderr + proc.stdout).strip().splitlines()
        tail = [l for l in lines if "Error" in l][-1:] or lines[-1:] or ["no output"]
        results.append(dict(case=case, impl=impl, error=tail[0][:200]))
      else:
        results.append(json.loads(line[0][len("RESULT "):]))
      r = results[-1]
      if "error" in r:
        print(f"{case:>12} {impl:>14}  failed: {r['error']}", flush=True)
      else:
        print(f"{case:>12} {impl:>14}  {r['median_ms']:10.2f} ms  {r['peak_mib']:10.1f} MiB"
              f"  ({r['device']}, batch {r['batch']}, b={r['block']} h={r['halo']})", flush=True)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(machine=platform.platform(), processor=platform.processor(),
                                 cpus=os.cpu_count(), results=results), indent=2))
  print(f"wrote {out}")


# A child process gets `attention.py CHILD '<settings as JSON>'` and prints one RESULT line.
CHILD = "--child_settings_json"

if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == CHILD:
    print("RESULT " + json.dumps(run_one(SimpleNamespace(**json.loads(sys.argv[2])))))
  else:
    main()
