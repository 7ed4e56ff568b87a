"""The fused kernel in Pallas's TPU interpret mode against its plain interpreted form.

Run by test_kernel_tpu_interpret.py with the pinned JAX, CPU-only, in a process of its own:

    python kernel_tpu_interpret.py CORE.json   ->   {"forward": max |difference|, "backward": [..],
                                                     "races": bool, "nonfinite": bool}

The plain interpreter (`interpret=True`, what the CPU tests run through TensorFlow) executes the
kernel body with ordinary arrays: a DMA is a copy done at once and the grid runs in order. The TPU
interpret mode (`pltpu.TPUInterpretParams`) keeps the TPU's semantics: each DMA lands only when its
semaphore is waited on, scratch memory starts as NaN, the 'parallel' grid runs in a random order,
and a happens-before race detector watches every read and write. The same inputs through both must
give the same arrays (the same float operations in the same order on each block), no race, and
nothing non-finite (a read of a window before its DMA completed would bring NaNs in).
"""
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "official_halonet", "kernels"))

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
from jax._src.pallas.mosaic import interpret as tpu_interpret  # noqa: E402  pylint: disable=C0413

import core as core_lib  # noqa: E402  pylint: disable=wrong-import-position
import halo_attention  # noqa: E402  pylint: disable=wrong-import-position


def _inputs(core: core_lib.Core, dtype):
  shapes = core.shapes()
  keys = jax.random.split(jax.random.PRNGKey(7), 4)
  arrays = [jax.random.normal(key, shapes[name], jnp.float32)
            for key, name in zip(keys, ("q", "kv_map", "tables", "out"))]
  return [a.astype(jnp.float32 if name == "tables" else dtype)
          for a, name in zip(arrays, ("q", "kv_map", "tables", "out"))]


def _run(core: core_lib.Core, interpret, inputs):
  forward = jax.jit(halo_attention.forward(core, interpret))(*inputs[:3])
  backward = jax.jit(halo_attention.backward(core, interpret))(*inputs)
  return [np.asarray(forward, np.float32)] + [np.asarray(g, np.float32) for g in backward]


def main(argv) -> int:
  with open(argv[1], encoding="utf-8") as f:
    request = json.load(f)
  core = core_lib.Core(**request["core"])
  inputs = _inputs(core, jnp.dtype(request["dtype"]))
  plain = _run(core, True, inputs)
  params = tpu_interpret.TPUInterpretParams(dma_execution_mode="on_wait", detect_races=True,
                                    uninitialized_memory="nan", random_seed=request["seed"])
  tpu = _run(core, params, inputs)
  races = tpu_interpret.races
  print(json.dumps({
      "forward": float(np.max(np.abs(plain[0] - tpu[0]))),
      "backward": [float(np.max(np.abs(a - b))) for a, b in zip(plain[1:], tpu[1:])],
      "races": bool(races is not None and races.races_found),
      "nonfinite": not all(np.isfinite(a).all() for a in tpu)}))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
