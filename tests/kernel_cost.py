"""What the fused kernel declares to XLA (its `pl.CostEstimate`), as the TPU module carries it.

Run by test_kernel_cost.py with the pinned JAX, CPU-only, in a process of its own:

    python kernel_cost.py REQUEST.json  ->  {name: {"forward": {"flops", "transcendentals",
                                                    "bytes_accessed"}, "backward": {...}}}
    REQUEST  {name: {"core": Core fields, "dtype": "bfloat16" or "float32"}}

The kernels are exported for the TPU exactly as kernels/export.py does; the declaration is read
back from the module's tpu_custom_call, which is what the TPU compiler's cost analysis counts.
"""
import json
import os
import re
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "official_halonet", "kernels"))

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
from jax import export as jax_export  # noqa: E402  pylint: disable=wrong-import-position

import core as core_lib  # noqa: E402  pylint: disable=wrong-import-position
import halo_attention  # noqa: E402  pylint: disable=wrong-import-position

# The backend config is a JSON string inside the module's text, its quotes escaped as \22.
DECLARED = re.compile(r'\\22cost_estimate\\22: \{\\22flops\\22: (\d+), '
                      r'\\22transcendentals\\22: (\d+), \\22bytes_accessed\\22: (\d+)\}')


def declared(core: core_lib.Core, dtype, backward: bool) -> dict:
  shapes = core.shapes()
  names = ["q", "kv_map", "tables"] + (["out"] if backward else [])
  specs = [jax.ShapeDtypeStruct(shapes[name], jnp.float32 if name == "tables" else dtype)
           for name in names]
  kernel = (halo_attention.backward if backward else halo_attention.forward)(core)
  text = jax_export.export(jax.jit(kernel), platforms=["tpu"])(*specs).mlir_module()
  found = DECLARED.findall(text)
  if len(found) != 1:
    raise ValueError(f"expected one cost estimate in the module, found {len(found)}")
  flops, transcendentals, moved = (int(v) for v in found[0])
  return {"flops": flops, "transcendentals": transcendentals, "bytes_accessed": moved}


def main(argv) -> int:
  with open(argv[1], encoding="utf-8") as f:
    request = json.load(f)
  found = {}
  for name, case in request.items():
    core, dtype = core_lib.Core(**case["core"]), jnp.dtype(case["dtype"])
    found[name] = {kind: declared(core, dtype, kind == "backward")
                   for kind in ("forward", "backward")}
  print(json.dumps(found))
  return 0

if __name__ == "__main__":
  sys.exit(main(sys.argv))
