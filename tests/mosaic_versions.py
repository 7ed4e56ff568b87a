"""Which Mosaic versions a kernel module carries, and the newest one the pinned libtpu reads.

Run by test_tpu_software.py with the pinned JAX, in a process of its own (libtpu's off-TPU
environment set by the caller):

    python mosaic_versions.py MODULE.bin ...   ->   {"kernels": [versions], "readable": N}

MODULE.bin: what kernels/library.py hands TensorFlow (a StableHLO portable artifact). Each Mosaic
kernel in it is a `tpu_custom_call` whose backend config carries the kernel's MLIR bytecode, with
its `stable_mosaic.version`. `readable` is found by asking the TPU compiler itself: a one-line
kernel is compiled for v5e with that attribute raised one version at a time, until libtpu refuses
to deserialize it.
"""
import base64
import io
import json
import os
import re
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
from jax import export as jax_export  # noqa: E402  pylint: disable=wrong-import-position
from jax._src import compiler  # noqa: E402  pylint: disable=wrong-import-position
from jax._src.interpreters import mlir  # noqa: E402  pylint: disable=wrong-import-position
from jax._src.lib import xla_client  # noqa: E402  pylint: disable=wrong-import-position
from jax._src.lib.mlir import ir  # noqa: E402  pylint: disable=wrong-import-position
from jax.experimental import pallas as pl  # noqa: E402  pylint: disable=wrong-import-position
from jax.experimental import topologies  # noqa: E402  pylint: disable=wrong-import-position

CONFIG = re.compile(r'backend_config = "([^"]*)"')
ATTRIBUTE = "stable_mosaic.version"


def _configs(text: str):
  """The JSON backend configs of the module text's custom calls (MLIR escapes quotes as \\22)."""
  for match in CONFIG.finditer(text):
    raw = re.sub(r"\\([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), match.group(1))
    if "custom_call_config" in raw:
      yield match, json.loads(raw)


def _body_version(body: bytes) -> int:
  with mlir.make_ir_context() as context:
    context.allow_unregistered_dialects = True
    return ir.IntegerAttr(ir.Module.parse(body).operation.attributes[ATTRIBUTE]).value


def kernel_versions(path: str):
  with open(path, "rb") as f:
    text = xla_client._xla.mlir.deserialize_portable_artifact(f.read())  # pylint: disable=W0212
  return [_body_version(base64.b64decode(config["custom_call_config"]["body"]))
          for _, config in _configs(text)]


def _with_version(text: str, version: int) -> str:
  """The module text with its one kernel's Mosaic version attribute set to `version`."""
  match, config = next(_configs(text))
  with mlir.make_ir_context() as context:
    context.allow_unregistered_dialects = True
    module = ir.Module.parse(base64.b64decode(config["custom_call_config"]["body"]))
    module.operation.attributes[ATTRIBUTE] = ir.IntegerAttr.get(
        ir.IntegerType.get_signless(64), version)
    buffer = io.BytesIO()
    module.operation.write_bytecode(buffer, desired_version=0)
  config["custom_call_config"]["body"] = base64.b64encode(buffer.getvalue()).decode()
  escaped = json.dumps(config).replace('"', "\\22")
  return text[:match.start(1)] + escaped + text[match.end(1):]


def readable_version() -> int:
  """The newest Mosaic version the installed libtpu compiles (starting from what JAX writes)."""
  kernel = lambda x_ref, o_ref: o_ref.__setitem__(..., x_ref[...] + 1)
  spec = jax.ShapeDtypeStruct((8, 128), jnp.float32)
  call = lambda x: pl.pallas_call(kernel, out_shape=spec)(x)
  text = jax_export.export(jax.jit(call), platforms=["tpu"])(spec).mlir_module()
  device = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices[0]
  options = compiler.get_compile_options(num_replicas=1, num_partitions=1,
                                         device_assignment=[device])
  version = _body_version(base64.b64decode(next(_configs(text))[1]["custom_call_config"]["body"]))
  while True:
    with mlir.make_ir_context():
      module = ir.Module.parse(_with_version(text, version + 1))
      try:
        device.client.compile(mlir.module_to_bytecode(module), compile_options=options)
      except Exception as e:  # pylint: disable=broad-except  (the compiler's refusal)
        if "Failed to deserialize the Mosaic module" in str(e) or "Unsupported version" in str(e):
          return version
        raise
    version += 1


def main(argv) -> int:
  versions = [v for path in argv[1:] for v in kernel_versions(path)]
  print(json.dumps({"kernels": versions, "readable": readable_version()}))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
