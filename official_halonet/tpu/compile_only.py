"""JAX's half of tpu_check: compile XLA HLO for a Cloud TPU with no TPU attached.

Runs with the pinned jax, jaxlib and libtpu (kernels/tpu_software.py) in a process of its own,
which imports nothing of TensorFlow or of this package (compiler.py starts it, with libtpu's
off-TPU environment):

    python compile_only.py REQUEST.json RESULT.json
    REQUEST  {"hlo": path of a serialized HloModuleProto, "topology": e.g. "v5e:2x2",
              "chip_config": "megacore" or "" (the client's default split of a chip into devices),
              "optimized_hlo": optional path to write the compiled module's text to}
    RESULT   {"compiled": true, "device_kind", "argument_bytes", "output_bytes", "alias_bytes",
              "temp_bytes", "generated_code_bytes", "flops", "bytes_accessed", "transcendentals",
              "while_loops", "compile_seconds"}
          or {"compiled": false, "error": the compiler's message, "out_of_memory": bool}

This module and kernels/export.py are the only ones that use JAX's private APIs (a version bump
touches them alone): `xla_client._xla.mlir.hlo_to_stablehlo` (HLO proto -> StableHLO), the
compile-only client's `compile`, and `jax._src.compiler.get_compile_options`. Measured with the
versions pinned in requirements.txt.
"""
import json
import re
import sys
import time



def _legalizable(module_text: str) -> str:
  """The module with what jaxlib's StableHLO legalizer rejects rewritten to what it takes.

  TensorFlow's bridge returns values through HLO `copy`: an identity reshape of the same shape is
  the same value. HLO's import gives every custom call (a Pallas kernel's `tpu_custom_call`)
  `result_tilings`, an attribute the compiler's StableHLO version lacks: when all are empty they
  say nothing and are dropped.
  """
  module_text = re.sub(r", result_tilings = \[(?:\[\](?:, )?)*\]", "", module_text)
  text = re.sub(r"mhlo\.copy (%[\w#.]+) : (tensor<[^>]*>)",
                r"stablehlo.reshape \1 : (\2) -> \2", module_text)
  return re.sub(r'"mhlo\.copy"\((%[\w#.]+)\) : \((tensor<[^>]*>)\) -> (tensor<[^>]*>)',
                r"stablehlo.reshape \1 : (\2) -> \3", text)


def topology_devices(topology: str, chip_config: str = ""):
  """The compile-only client's devices of the named topology (chip_config e.g. "megacore")."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  extra = {"chip_config_name": chip_config} if chip_config else {}
  return topologies.get_topology_desc(topology_name=topology, platform="tpu", **extra).devices


def _compile(hlo: bytes, topology: str, chip_config: str):
  """(executable, device) for one device of the named topology."""
  from jax._src import compiler  # pylint: disable=g-import-not-at-top
  from jax._src.interpreters import mlir  # pylint: disable=g-import-not-at-top
  from jax._src.lib import xla_client  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir import ir  # pylint: disable=g-import-not-at-top
  device = topology_devices(topology, chip_config)[0]
  options = compiler.get_compile_options(num_replicas=1, num_partitions=1,
                                         device_assignment=[device])
  with mlir.make_ir_context():
    stablehlo = xla_client._xla.mlir.hlo_to_stablehlo(hlo)  # pylint: disable=protected-access
    module = ir.Module.parse(_legalizable(str(ir.Module.parse(stablehlo))))
    executable = device.client.compile(mlir.module_to_bytecode(module), compile_options=options)
  return executable, device


def compile_hlo(request: dict) -> dict:
  """Compiles request['hlo'] for request['topology']; the RESULT dict of the module docstring."""
  with open(request["hlo"], "rb") as f:
    hlo = f.read()
  start = time.time()
  try:
    executable, device = _compile(hlo, request["topology"], request.get("chip_config", ""))
  except Exception as e:  # pylint: disable=broad-except  (the compiler's own errors)
    message = " ".join(str(e).split())
    return {"compiled": False, "error": message,
            "out_of_memory": "RESOURCE_EXHAUSTED" in message or "HbmOom" in message}
  memory = executable.get_compiled_memory_stats()
  cost = executable.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  text = executable.hlo_modules()[0].to_string()
  if request.get("optimized_hlo"):
    with open(request["optimized_hlo"], "w", encoding="utf-8") as f:
      f.write(text)
  return {"compiled": True, "device_kind": device.device_kind,
          "argument_bytes": memory.argument_size_in_bytes,
          "output_bytes": memory.output_size_in_bytes,
          "alias_bytes": memory.alias_size_in_bytes,
          "temp_bytes": memory.temp_size_in_bytes,
          "generated_code_bytes": memory.generated_code_size_in_bytes,
          "flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
          "transcendentals": float(cost.get("transcendentals", 0.0)),
          "while_loops": len(re.findall(r"= \S+ while\(", text)),
          "compile_seconds": round(time.time() - start, 2)}


def main(argv) -> int:
  if len(argv) != 3:
    print(__doc__, file=sys.stderr)
    return 2
  with open(argv[1], encoding="utf-8") as f:
    request = json.load(f)
  result = compile_hlo(request)
  with open(argv[2], "w", encoding="utf-8") as f:
    json.dump(result, f)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
