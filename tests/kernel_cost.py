"""What the fused kernel declares to XLA (its `pl.CostEstimate`), as the TPU module carries it.

Run by test_kernel_cost.py with the pinned JAX, CPU-only, in a process of its own:

    python kernel_cost.py REQUEST.json  ->  {name: {"forward": {"flops", "transcendentals",
                                                    "bytes_accessed"}, "backward": {...}}}
    REQUEST  {name: {"core": Core fields, "dtype": "bfloat16" or "float32"}}

The kernels are exported for the TPU by kernels/export.py's own `exported`; the declaration is read
back from the module's tpu_custom_call, which is what the TPU compiler's cost analysis counts.
"""
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "official_halonet", "kernels"))

import core as core_lib  # noqa: E402  pylint: disable=wrong-import-position
import export  # noqa: E402  pylint: disable=wrong-import-position  (CPU-only JAX from here on)

# The backend config is a JSON string inside the module's text, its quotes escaped as \22.
DECLARED = re.compile(r'\\22cost_estimate\\22: \{\\22flops\\22: (\d+), '
                      r'\\22transcendentals\\22: (\d+), \\22bytes_accessed\\22: (\d+)\}')


def declared(core: core_lib.Core, dtype: str, backward: bool) -> dict:
  text = export.exported(core, "backward" if backward else "forward", dtype, "tpu").mlir_module()
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
    core = core_lib.Core(**case["core"])
    found[name] = {kind: declared(core, case["dtype"], kind == "backward")
                   for kind in ("forward", "backward")}
  print(json.dumps(found))
  return 0

if __name__ == "__main__":
  sys.exit(main(sys.argv))
