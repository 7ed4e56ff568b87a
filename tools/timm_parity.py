"""Compares this project's converted timm HaloNets with timm's logits (no PyTorch needed).

    python tools/timm_parity.py tests/fixtures/timm      # the reduced models in the repository
    python tools/timm_parity.py /tmp/timm_full           # tools/timm_fixtures.py at full width

For every <name>.json written by tools/timm_fixtures.py in the directory: loads <name>.safetensors
with official_halonet.models.from_timm, normalises the stored uint8 crops as timm does
((x / 255 - mean) / std, float32), runs the model in inference mode and prints the largest
absolute logit difference from timm's, the logits' scale, whether every image's top-5 classes
agree in order, and the parameter counts of both; then the same model built in float64 against
timm's float64 logits (the conversion's exactness, free of float32 rounding), beside timm's own
float32 error (its float32 logits against its float64 ones).
"""
import glob
import json
import os
import sys
from typing import Dict

import numpy as np

import official_halonet  # noqa: F401  (selects tf_keras before TensorFlow is imported)
import tf_keras
from official_halonet import models


def load_fixture(directory: str, name: str):
  """(metadata, normalised float32 [N, S, S, 3] images) of fixture `name`."""
  with open(os.path.join(directory, f"{name}.json")) as f:
    meta = json.load(f)
  crops = np.load(os.path.join(directory, meta["inputs"]))["crops"]
  x = crops.astype(np.float32) / np.float32(255)
  images = (x - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"], np.float32)
  return meta, images


def float64_diff(directory: str, name: str) -> float:
  """Max |logit difference| of the converted model and timm's, both computed in float64."""
  meta, images = load_fixture(directory, name)
  policy = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy("float64")
  try:
    model = models.from_timm(name, os.path.join(directory, f"{name}.safetensors"))
    logits = model(images.astype(np.float64), training=False).numpy()
  finally:
    tf_keras.mixed_precision.set_global_policy(policy)
  return float(np.max(np.abs(logits - np.asarray(meta["logits_float64"]))))


def compare(directory: str, name: str) -> Dict[str, object]:
  """Converts fixture `name` and compares it with timm's float32 logits."""
  meta, images = load_fixture(directory, name)
  model = models.from_timm(name, os.path.join(directory, f"{name}.safetensors"))
  logits = model(images, training=False).numpy()
  expected = np.asarray(meta["logits"], np.float32)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  return dict(
      model=name, max_abs_diff=float(np.max(np.abs(logits - expected))),
      max_abs_logit=float(np.max(np.abs(expected))),
      top5_equal=bool(np.array_equal(top5, np.asarray(meta["top5"]))),
      params=int(sum(int(np.prod(v.shape)) for v in model.trainable_weights)),
      timm_params=int(meta["parameters"]), logits=logits)


def main(argv):
  directory = argv[1] if len(argv) > 1 else "tests/fixtures/timm"
  names = sorted(os.path.basename(p)[:-len(".json")]
                 for p in glob.glob(os.path.join(directory, "*.json"))
                 if os.path.exists(p[:-len(".json")] + ".safetensors"))
  print("| model | parameters (here / timm) | max abs logit | float32: max abs diff | top-5 "
        "equal | float64: max abs diff | timm's own float32 error |")
  print("|---|---|---|---|---|---|---|")
  for name in names:
    r = compare(directory, name)
    with open(os.path.join(directory, f"{name}.json")) as f:
      own = json.load(f)["float32_error"]
    print(f"| {r['model']} | {r['params']:,} / {r['timm_params']:,} | {r['max_abs_logit']:.2f} | "
          f"{r['max_abs_diff']:.1e} | {r['top5_equal']} | {float64_diff(directory, name):.1e} | "
          f"{own:.1e} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
