"""The least bytes a model's halo attention can move on one TPU core when XLA compiles it, beside
what the whole model moves with XLA's attention and with the fused kernel (fused_attention='tpu'):
the figures of docs/tpu_attention_bytes.md.

    python bench/tpu_attention_floor.py                          # h1, halonet50 and resnet50
    python bench/tpu_attention_floor.py --models=h4 --train --nowhole --out=/tmp/floor.json

For each HaloAttention layer of the model (built at --image_size, --batch per core, mixed_bfloat16)
the floor program is the attention's core alone, softmax(q·kᵀ)·v, on tensors already in the block
layout the dots want: q [B, Z, Q, N, D], k [B, Z, K, N, D] and v [B, Z, K, N, Dv] in bfloat16,
block_attention.attend with the bfloat16 logit storage and nothing else: no position terms, mask,
projections, window forming or re-blocking. Every real layer does at least this, so the sum over the
layers bounds from below what any XLA formulation of the model's attention moves, as long as the
q·k and weights·v products are separate XLA instructions (XLA:TPU fuses elementwise work into a dot,
never one dot into another, so the logits go through HBM between them).

--train compiles the gradient of Σ out² with respect to q, k and v instead (the backward pass's
core). --whole also compiles each model's whole forward (classifier, training=False) for its
compiler-counted FLOPs and bytes, once as published and once with fused_attention='tpu' (the
kernel's FLOPs and bytes are its declared cost estimate: the analytic products and its inputs and
outputs). All figures are the TPU compiler's cost analysis of a deviceless
compile (official_halonet/tpu/compiler.py), not a measured run. Flags are absl's.
"""
import collections
import json
import pathlib
import sys

from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CoreShape = collections.namedtuple("CoreShape", "blocks queries keys heads key_width value_width")


def _define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_list("models", ["h1", "halonet50", "resnet50"],
                    "Model ids (official_halonet.models).", flag_values=values)
  flags.DEFINE_integer("batch", 32, "Images per core.", flag_values=values)
  flags.DEFINE_integer("image_size", 256, "Input side.", flag_values=values)
  flags.DEFINE_string("generation", "v5litepod", "TPU generation compiled for.", flag_values=values)
  flags.DEFINE_bool("train", False, "Floor of the backward core instead of the forward.",
                    flag_values=values)
  flags.DEFINE_bool("whole", True, "Also compile each model's whole forward.", flag_values=values)
  flags.DEFINE_string("out", "", "Write the results as JSON here.", flag_values=values)


def cores(model, batch: int):
  """{CoreShape: how many layers have it} for every HaloAttention of `model` (blocks per image)."""
  from official_halonet.models import attention_maps  # pylint: disable=g-import-not-at-top
  counts = collections.Counter()
  for layer in attention_maps.attention_layers(model):
    _, height, width, _ = layer.input_shape
    b, s = layer.block_size, layer.query_stride
    n = layer.num_heads
    counts[CoreShape(-(-height // b) * -(-width // b), (b // s)**2, layer.window_size**2, n,
                layer.key_dim // n, layer.value_dim // n)] += 1
  return counts


def core_program(core: CoreShape, batch: int, train: bool):
  """(tf.function, input specs) of the floor program for one layer shape."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from official_halonet.layers import block_attention  # pylint: disable=g-import-not-at-top
  lead = [batch, core.blocks]
  specs = (tf.TensorSpec(lead + [core.queries, core.heads, core.key_width], tf.bfloat16),
           tf.TensorSpec(lead + [core.keys, core.heads, core.key_width], tf.bfloat16),
           tf.TensorSpec(lead + [core.keys, core.heads, core.value_width], tf.bfloat16))

  def forward(q, k, v):
    return block_attention.attend(tf.cast(q, tf.float32), tf.cast(k, tf.float32), v,
                                  storage=tf.bfloat16)

  def backward(q, k, v):
    with tf.GradientTape() as tape:
      tape.watch([q, k, v])
      loss = tf.reduce_sum(tf.cast(forward(q, k, v), tf.float32)**2)
    return tape.gradient(loss, [q, k, v])

  return tf.function(backward if train else forward, jit_compile=True), specs


def compiled(function, specs, generation) -> dict:
  """The compiler's flops, bytes accessed and temporaries for `function` at `specs`."""
  from official_halonet.tpu import compiler  # pylint: disable=g-import-not-at-top
  result = compiler.compile_for(function.experimental_get_compiler_ir(*specs)(
      stage="hlo_serialized"), generation)
  if not result.get("compiled"):
    raise SystemExit(f"the TPU compiler refused the program: {result.get('error')}")
  if result.get("while_loops"):
    raise SystemExit("the program has a while loop, whose cost analysis counts one trip")
  return {key: result[key] for key in ("flops", "bytes_accessed", "temp_bytes")}


def _forward(model):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.function(lambda x: model(x, training=False), jit_compile=True)


def measure(model_id: str, options, generation) -> dict:
  """{'whole': {'xla' | 'fused': forward figures}, 'floor': summed core figures, 'layers': per
  shape}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from official_halonet import models  # pylint: disable=g-import-not-at-top
  size = options.image_size
  spec = (tf.TensorSpec([options.batch, size, size, 3], tf.float32),)
  whole = {}
  for fused in ((None, "tpu") if options.whole else ()):
    if fused and not model_id.startswith(("h", "halonet")):
      continue
    built = models.build(model_id, num_classes=1000, image_size=size, fused_attention=fused)
    whole["fused" if fused else "xla"] = compiled(_forward(built), spec, generation)
  model = models.build(model_id, num_classes=1000, image_size=size)
  layers, floor = [], collections.Counter()
  for core, count in cores(model, options.batch).items():
    figures = compiled(*core_program(core, options.batch, options.train), generation)
    layers.append({"shape": core._asdict(), "layers": count, **figures})
    floor.update({key: value * count for key, value in figures.items() if key != "temp_bytes"})
  return {"whole": whole, "floor": dict(floor), "layers": layers}


def _gb(value) -> str:
  return f"{value / 1e9:.2f}"


def table(results: dict) -> str:
  """Markdown: per model, the whole forward's figures (XLA, fused) and the attention floor's."""
  lines = ["| model | forward | GFLOP | GB accessed | FLOP/B | temporaries GB |",
           "|---|---|---|---|---|---|"]
  for model_id, result in results.items():
    count = sum(layer["layers"] for layer in result["layers"])
    rows = [(f"whole, {name} attention", figures) for name, figures in result["whole"].items()]
    if count:
      rows.append((f"XLA's floor of its {count} attention cores", result["floor"]))
    for name, figures in rows:
      flops, moved = figures["flops"], figures["bytes_accessed"]
      temporaries = _gb(figures["temp_bytes"]) if "temp_bytes" in figures else ""
      lines.append(f"| {model_id} | {name} | {flops / 1e9:.1f} | {_gb(moved)} | "
                   f"{flops / moved:.1f} | {temporaries} |")
  return "\n".join(lines)


def main(argv) -> int:
  values = flags.FlagValues()
  _define_flags(values)
  values(argv)
  import tf_keras  # pylint: disable=g-import-not-at-top
  import official_halonet  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from official_halonet.tpu import chips  # pylint: disable=g-import-not-at-top
  tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  generation = chips.GENERATIONS[chips.ALIASES.get(values.generation, values.generation)]
  results = {}
  for model_id in values.models:
    results[model_id] = measure(model_id, values, generation)
    print(f"{model_id}: {json.dumps(results[model_id]['floor'])}", flush=True)
  print(table(results))
  if values.out:
    pathlib.Path(values.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
