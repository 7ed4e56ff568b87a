"""The TPU software a TPU host runs (kernels/tpu_software.py, docs/tpu_software.md).

TensorFlow's TPU build imports the pinned libtpu (it binds every TPU C API function at import and
aborts on a missing one: libtpu 0.0.32 and later do), in the venv `make test` builds the way
tpu_scripts/host_setup.sh builds a host's (tensorflow-tpu and libtpu over the project's packages);
the fused kernels carry a Mosaic version that libtpu reads; the pins are one set, installed.
"""
import json
import os
import re
import subprocess
import sys

import official_halonet  # noqa: F401

from official_halonet.kernels import library
from official_halonet.kernels import tpu_software

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_TPU_VENV = os.path.join(ROOT, ".tf-tpu-venv")
HOST_STEP = """
import importlib.metadata as metadata, json
import official_halonet
import tensorflow as tf
from official_halonet.layers import HaloAttention
layer = HaloAttention(num_heads=2, key_dim=8, block_size=4, halo_size=1)
y = layer(tf.random.stateless_normal([1, 8, 8, 4], seed=[1, 2]))
loaded = {line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().endswith("libtpu.so")}
print(json.dumps(dict(tensorflow=tf.__file__, tensorflow_tpu=metadata.version("tensorflow-tpu"),
                      libtpu=metadata.version("libtpu"), loaded=sorted(loaded),
                      shape=y.shape.as_list())))
"""


def _environment():
  """libtpu's off-TPU settings, and no TPU_LIBRARY_PATH (which libtpu's Python package sets once a
  JAX in the process has looked for a TPU): TensorFlow finds libtpu beside itself, as on a host."""
  environment = {**tpu_software.OFF_TPU_ENVIRONMENT, **os.environ, "PYTHONPATH": ROOT,
                 "TF_CPP_MIN_LOG_LEVEL": "0"}
  environment.pop("TPU_LIBRARY_PATH", None)
  return environment


def test_tensorflow_tpu_build_loads_the_pinned_libtpu():
  """The host's TensorFlow (tensorflow-tpu of the pinned tensorflow's version) imports with the
  pinned libtpu loaded into the process, and runs a halo layer."""
  python = os.path.join(TF_TPU_VENV, "bin", "python")
  assert os.access(python, os.X_OK), f"{TF_TPU_VENV} is missing: run `make tf-tpu-venv`"
  done = subprocess.run([python, "-c", HOST_STEP], cwd=ROOT, env=_environment(),
                        capture_output=True, text=True, timeout=600, check=False)
  fatal = re.findall(r"^\S+ \S+: F \S+\] (.*)$", done.stderr, re.M)
  assert done.returncode == 0, (
      f"TensorFlow's TPU build with libtpu {tpu_software.pinned('libtpu')}: exit "
      f"{done.returncode}, {(fatal or done.stderr.strip().splitlines()[-1:] or ['no output'])[0]}")
  seen = json.loads(done.stdout.strip().splitlines()[-1])
  assert seen["tensorflow"].startswith(TF_TPU_VENV + os.sep), seen
  assert seen["tensorflow_tpu"] == tpu_software.pinned("tensorflow")
  assert seen["libtpu"] == tpu_software.pinned("libtpu")
  assert len(seen["loaded"]) == 1 and seen["loaded"][0].startswith(TF_TPU_VENV + os.sep), seen
  assert seen["shape"] == [1, 8, 8, 8]


def test_the_kernels_carry_a_mosaic_version_the_pinned_libtpu_reads(tmp_path, monkeypatch):
  """Mosaic payloads are versioned and libtpu refuses newer ones than it knows: the forward and
  backward kernels' version is at most the newest the pinned libtpu compiles, as the compiler
  itself answers (tests/mosaic_versions.py)."""
  monkeypatch.setenv("OFFICIAL_HALONET_KERNEL_CACHE", str(tmp_path))
  monkeypatch.setattr(library, "_MODULES", {})
  core = dict(batch=2, blocks_x=2, blocks_y=2, block=8, halo=2, queries=64, heads=2, key_width=8,
              value_width=8, scale=0.35, position_width=8)
  paths = []
  for kind in ("forward", "backward"):
    paths.append(str(tmp_path / f"{kind}.bin"))
    with open(paths[-1], "wb") as f:
      f.write(library.module(kind, core, "bfloat16", "tpu")[0])
  done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mosaic_versions.py")] + paths,
                        env=_environment(), capture_output=True, text=True, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
  seen = json.loads(done.stdout.strip().splitlines()[-1])
  assert len(seen["kernels"]) == 2, seen
  assert max(seen["kernels"]) <= seen["readable"], (
      f"the kernels are Mosaic {seen['kernels']}, libtpu {tpu_software.pinned('libtpu')} reads "
      f"up to {seen['readable']}")


def test_the_tpu_pins_are_one_set_and_installed():
  """requirements.txt and constraints.txt pin the same jax, jaxlib and libtpu, and this Python has
  them (the TPU hosts install the same files)."""
  with open(os.path.join(ROOT, "constraints.txt"), encoding="utf-8") as f:
    locked = dict(line.strip().split("==") for line in f if "==" in line)
  for package in tpu_software.PACKAGES:
    assert tpu_software.check(package) == locked[package]
