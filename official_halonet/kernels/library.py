"""Serialized kernel modules for TensorFlow, made by export.py and cached.

A module is specific to its kernel ('forward' or 'backward'), its static shape (core.Core),
dtype and platform ('tpu': a Mosaic kernel for the TPU compiler; 'cpu': the same kernel in Pallas's
interpreter). The first request for one runs export.py with the pinned JAX (tpu_software.py) in a
process of its own, CPU-only, so that JAX never shares a process or a TPU with TensorFlow (a few
seconds); later ones read it from memory or from the cache directory
($OFFICIAL_HALONET_KERNEL_CACHE, default ~/.cache/official_halonet/kernels), keyed by the request
and the kernel sources' hash.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, Tuple

from official_halonet.kernels import tpu_software

HERE = os.path.dirname(os.path.abspath(__file__))
EXPORT = os.path.join(HERE, "export.py")
SOURCES = tuple(os.path.join(HERE, name) for name in ("core.py", "halo_attention.py", "export.py"))
# The StableHLO version TensorFlow 2.20's XlaCallModule deserializes (newer artifacts fail to load).
STABLEHLO_VERSION = "1.12.1"
PLATFORMS = ("tpu", "cpu")
_MODULES: Dict[str, Tuple[bytes, int]] = {}


class ExportError(RuntimeError):
  """The pinned JAX is missing or could not make a module; the message says which."""


def check_exporter() -> None:
  """Raises ExportError unless this Python has the pinned jax and jaxlib that export.py needs."""
  for package in ("jax", "jaxlib"):
    try:
      tpu_software.check(package)
    except tpu_software.VersionError as e:
      raise ExportError(f"the fused attention kernels cannot be made: {e}") from None


def cache_dir() -> str:
  default = os.path.join(os.path.expanduser("~"), ".cache", "official_halonet", "kernels")
  return os.environ.get("OFFICIAL_HALONET_KERNEL_CACHE", default)


def sources_digest() -> str:
  """A hash of the kernel's sources: what a cached module or verdict was made from."""
  digest = hashlib.sha256()
  for path in SOURCES:
    with open(path, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def _key(request: dict) -> str:
  return hashlib.sha256((json.dumps(request, sort_keys=True) + sources_digest()).encode()
                        ).hexdigest()[:32]


def _export(request: dict) -> Tuple[bytes, int]:
  """Runs export.py for `request` in a CPU-only JAX process of its own."""
  with tempfile.TemporaryDirectory(prefix="halonet_kernel_") as tmp:
    paths = [os.path.join(tmp, name) for name in ("request.json", "module.bin")]
    with open(paths[0], "w", encoding="utf-8") as f:
      json.dump(request, f)
    check_exporter()
    done = subprocess.run([sys.executable, EXPORT] + paths, capture_output=True, text=True,
                          check=False)
    if done.returncode or not os.path.exists(paths[1]):
      last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
      raise ExportError(f"exporting the {request['kind']} kernel for {request['core']} "
                        f"failed (exit {done.returncode}): {last[0].strip()}")
    with open(paths[1], "rb") as f:
      return f.read(), json.loads(done.stdout.strip().splitlines()[-1])["version"]


def module(kind: str, core: dict, dtype: str, platform: str) -> Tuple[bytes, int]:
  """(serialized StableHLO, XlaCallModule version) of one kernel (see the module docstring)."""
  if platform not in PLATFORMS:
    raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
  request = {"kind": kind, "core": core, "dtype": dtype, "platform": platform,
             "stablehlo_version": STABLEHLO_VERSION, "jax": tpu_software.installed("jax")}
  key = _key(request)
  if key not in _MODULES:
    path = os.path.join(cache_dir(), key + ".bin")
    if os.path.exists(path):
      with open(path, "rb") as f:
        version, data = int(f.readline()), f.read()
    else:
      data, version = _export(request)
      os.makedirs(cache_dir(), exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=cache_dir(), delete=False) as f:
        f.write(f"{version}\n".encode() + data)
      os.replace(f.name, path)
    _MODULES[key] = (data, version)
  return _MODULES[key]
