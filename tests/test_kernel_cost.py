"""The fused kernel's declared cost (`pl.CostEstimate`, what XLA's TPU cost analysis counts for the
Pallas call, so what tpu_check's bytes, FLOPs and rooflines are made of) equals an analytic count,
made here from the Core's fields alone, of what the kernel moves and computes.

Bytes, in the arrays' dtype (the tables and two constants float32): q and the output; each block's
window as its DMAs read it, w rows of R pixels (a row is read from the 8-pixel row tile holding
its first pixel, and every block reads as many as the latest start in a tile needs) of the map's
channels padded to whole 128-lane tiles; the tables and the constants once (E, the key
positions: one [w·R, 2w + 1] table per start in a tile, in the dtype; M [Q, 2·bq·w] and
F [2·bq·w, 2w]; for SASA's centred windows the bias B [Q, 2w]); in backward also dout, dq and the windows' gradient, and the tables' gradient as
one float32 partial sum per grid step. FLOPs, 2 per multiply-add, over the w² keys of the model (the
filler keys of a row tile are the kernel's overhead, not the model's work): forward q·k and P·v and
the position terms (w rows and w columns of position_width channels per query), backward the
recomputed q·k and position terms, dV, dP, dq, dk, and the position terms' gradients of q and of
the tables. One exp per logit read, filler included.
"""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "official_halonet", "kernels"))
import core as core_lib  # noqa: E402  pylint: disable=wrong-import-position

CASES = {
    # H1's stage-1 layer shape (b=8, h=3; map layout), bfloat16.
    "h1": (dict(batch=2, blocks_x=2, blocks_y=4, block=8, halo=3, queries=64, heads=4,
                key_width=16, value_width=16, scale=0.25, position_width=16), "bfloat16"),
    # H3-H7's blocks of 10 (windows start mid-tile; block by block), channels that are not whole
    # lane tiles, split position tables, float32.
    "blocks10": (dict(batch=1, blocks_x=1, blocks_y=3, block=10, halo=3, queries=100, heads=4,
                      key_width=16, value_width=64, scale=0.25, position_width=8), "float32"),
    # SASA's centred 7×7 windows: the mask's bias B [Q, 2w] is one more constant.
    "sasa": (dict(batch=1, blocks_x=1, blocks_y=2, block=8, halo=3, queries=64, heads=2,
                  key_width=16, value_width=16, scale=0.25, position_width=8, centered=True),
             "bfloat16"),
}


def _analytic(c: dict, itemsize: int, steps: int) -> dict:
  """{"forward": (flops, transcendentals, bytes), "backward": ...} from the Core's fields."""
  bq, w = math.isqrt(c["queries"]), c["block"] + 2 * c["halo"]
  blocks = c["batch"] * c["blocks_x"] * c["blocks_y"]
  n, d, dv, queries = c["heads"], c["key_width"], c["value_width"], c["queries"]
  starts = sorted({y * c["block"] % 8 for y in range(8)})  # a window's first pixel in its tile
  row = max(-(-(start + w) // 8) * 8 for start in starts)
  channels = -(-n * (d + dv) // 128) * 128
  q, out, windows = blocks * queries * n * d, blocks * queries * n * dv, blocks * w * row * channels
  tables = 2 * bq * w * d
  constants = itemsize * len(starts) * w * row * (2 * w + 1) + 4 * (queries * 2 * bq * w
                                                                     + 2 * bq * w * 2 * w)
  constants += 4 * queries * 2 * w if c.get("centered") else 0
  per_query = lambda widths, position_passes: (
      2 * (w * w * widths + position_passes * 2 * w * c["position_width"]))
  exps = blocks * n * queries * w * row
  return {
      "forward": (blocks * n * queries * per_query(d + dv, 1), exps,
                  itemsize * (q + out + windows) + 4 * tables + constants),
      "backward": (blocks * n * queries * per_query(3 * d + 2 * dv, 3), exps,
                   itemsize * (2 * q + out + 2 * windows) + 4 * tables + constants
                   + 4 * steps * tables)}


def test_declared_cost_is_the_analytic_count(tmp_path):
  request = {name: {"core": core, "dtype": dtype} for name, (core, dtype) in CASES.items()}
  path = tmp_path / "request.json"
  path.write_text(json.dumps(request))
  done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kernel_cost.py"), str(path)],
                        capture_output=True, text=True, timeout=900, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr.strip().splitlines()[-3:]
  declared = json.loads(done.stdout.strip().splitlines()[-1])
  for name, (fields, dtype) in CASES.items():
    itemsize = 2 if dtype == "bfloat16" else 4
    core = core_lib.Core(**fields)
    # The grid's steps are the kernel's choice (core.group); only the partial sums depend on it.
    steps = core.blocks // core.group(itemsize, backward=True)
    for kind, (flops, exps, moved) in _analytic(fields, itemsize, steps).items():
      seen = declared[name][kind]
      assert (seen["flops"], seen["transcendentals"], seen["bytes_accessed"]) == (
          flops, exps, moved), (name, kind)
