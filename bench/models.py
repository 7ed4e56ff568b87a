"""The README's model table: every named model built by the code at its published resolution, its
parameter count (1000-class classifier, trainable weights) against the paper's, and one real-size
forward pass (batch 1, inference mode) with its wall time.

    python bench/models.py                     # all models, markdown table + JSON
    python bench/models.py --models=h0,h7 --noforward

Flags are absl's (official_halonet.data.command_line, like the data tools).
"""
import json
import pathlib
import sys
import time

from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _define_flags(values: flags.FlagValues) -> None:
  from official_halonet import models
  flags.DEFINE_list("models", [m for m in models.MODELS if m != "tiny"],
                    "Named models, comma-separated (default: all but 'tiny').", flag_values=values)
  flags.register_validator("models", lambda names: set(names) <= set(models.MODELS),
                           "every entry must be a name from official_halonet.models.MODELS",
                           flag_values=values)
  flags.DEFINE_bool("forward", True, "Time one forward pass (--noforward: count parameters only).",
                    flag_values=values)
  flags.DEFINE_string("out", str(ROOT / "bench" / "results" / "models.json"),
                      "Where the JSON rows go.", flag_values=values)


def main(argv=None):
  import official_halonet  # noqa: F401
  import numpy as np
  import tensorflow as tf
  import tf_keras
  from official_halonet import models
  from official_halonet.data import command_line

  args = command_line.parse(_define_flags, argv, prog="python bench/models.py",
                            description=__doc__.split("\n\n")[0])

  rows = []
  print("| model | stages | b / h | image | params (built) | params (paper) | top-1 (paper) | "
        "forward, batch 1 |")
  print("|---|---|---|---|---|---|---|---|")
  for model_id in args.models:
    spec = models.get_spec(model_id)
    tf_keras.backend.clear_session()
    model = models.build(model_id, num_classes=1000)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables) / 1e6
    row = dict(model=model_id, image_size=spec.image_size, params_m=round(params, 3),
               paper_params_m=spec.paper_params, paper_top1=spec.paper_top1)
    if args.forward:
      x = tf.random.uniform([1, spec.image_size, spec.image_size, 3])
      fn = tf.function(lambda t: model(t, training=False))
      fn(x).numpy()  # trace and warm up
      start = time.perf_counter()
      logits = fn(x).numpy()
      row["forward_s"] = round(time.perf_counter() - start, 3)
      row["finite"] = bool(np.isfinite(logits).all())
    rows.append(row)
    ops = [sorted(set(spec.listed(stage))) for stage in range(4)]
    stages = "-".join("/".join(op[0] for op in stage) for stage in ops)
    has_halo = any("halo" in stage for stage in ops)
    print(f"| {model_id} | {stages} {'/'.join(map(str, spec.blocks))} | "
          f"{f'{spec.block_size} / {spec.halo_size}' if has_halo else '–'} | {spec.image_size} | "
          f"{params:.2f}M | {spec.paper_params or '–'}{'M' if spec.paper_params else ''} | "
          f"{spec.paper_top1 or '–'} | "
          f"{row.get('forward_s', '–')}{' s' if 'forward_s' in row else ''} |", flush=True)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(device=tf.config.list_physical_devices()[-1].device_type,
                                 rows=rows), indent=2))


if __name__ == "__main__":
  main()
