"""JAX's half of the fused attention: serialize one kernel for TensorFlow.

Runs in a process of its own with the pinned JAX (kernels/tpu_software.py), CPU-only, never in
TensorFlow's (library.py starts it):

    python export.py REQUEST.json MODULE.bin
    REQUEST  {"kind": "forward" | "backward", "core": core.Core's fields,
              "dtype": "bfloat16" | "float32" (of all arrays but the float32 tables),
              "platform": "tpu" | "cpu",
              "stablehlo_version": the version TensorFlow's XlaCallModule reads, e.g. "1.12.1",
              "jax": the exporting JAX's version (part of the cache key)}
             The 'tpu' kernel is not lowered for one chip: this JAX leaves its layout passes to
             the TPU compiler, which lays it out for the chip it compiles for.
    MODULE   the serialized StableHLO module; its calling-convention version is printed on stdout
             as {"version": N}

'tpu' lowers the kernel through Mosaic (a `tpu_custom_call`, for the TPU compiler); 'cpu' runs the
same kernel body in Pallas's interpreter (plain StableHLO loops, slow), which lets TensorFlow on a
CPU check the whole fused path numerically.

This module and compile_only.py are the only ones that use JAX's private APIs
(`xla_client._xla.mlir.serialize_portable_artifact`, to write for TensorFlow's StableHLO).
"""
import dataclasses
import json
import os
import sys

# Lowering for a TPU needs no TPU: on a TPU host the device belongs to the TensorFlow run, so this
# process is CPU-only whatever the environment says.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import core  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import halo_attention  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def exported(call: core.Core, kind: str, dtype: str, platform: str):
  """jax.export's Exported of the `kind` ('forward' or 'backward') kernel for `call`, its arrays in
  `dtype` (the tables float32), lowered for `platform` ('tpu': Mosaic; 'cpu': interpreted)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  make = {"forward": halo_attention.forward, "backward": halo_attention.backward}[kind]
  names = ["q", "kv_map", "tables"] + (["out"] if kind == "backward" else [])
  specs = [jax.ShapeDtypeStruct(call.shapes()[name],
                                jax.numpy.float32 if name == "tables" else jax.numpy.dtype(dtype))
           for name in names]
  return jax_export.export(jax.jit(make(call, platform == "cpu")), platforms=[platform])(*specs)


def serialized(request: dict) -> (bytes, int):
  """(module bytes, calling-convention version) for REQUEST."""
  from jax._src.lib import xla_client  # pylint: disable=g-import-not-at-top
  module = exported(core.Core(**request["core"]), request["kind"], request["dtype"],
                    request["platform"])
  data = xla_client._xla.mlir.serialize_portable_artifact(  # pylint: disable=protected-access
      module.mlir_module(), request["stablehlo_version"])
  return data, module.calling_convention_version


def main(argv) -> int:
  if len(argv) != 3:
    print(__doc__, file=sys.stderr)
    return 2
  with open(argv[1], encoding="utf-8") as f:
    request = json.load(f)
  unknown = set(request["core"]) - {f.name for f in dataclasses.fields(core.Core)}
  if unknown:
    print(f"unknown Core fields: {sorted(unknown)}", file=sys.stderr)
    return 2
  data, version = serialized(request)
  with open(argv[2], "wb") as f:
    f.write(data)
  print(json.dumps({"version": version}))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
