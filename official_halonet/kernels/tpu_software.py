"""The TPU software the project pins, and how libtpu starts on a machine that is not a TPU VM.

One compiler everywhere (docs/tpu_software.md): requirements.txt pins libtpu to the release
TensorFlow 2.20's TPU build loads, and jax / jaxlib to the release whose Pallas writes kernels that
libtpu reads. The TPU hosts install exactly that set (tpu_scripts/host_setup.sh), `--mode=tpu_check`
compiles with it, and the fused kernels are exported by it. Standard library only.

    python -m official_halonet.kernels.tpu_software [PACKAGE ...]   (default: libtpu jax jaxlib)

prints each package's installed and pinned versions and exits 1, with one line naming both, where
they differ (host_setup.sh runs it after installing).
"""
import importlib.metadata
import os
import re
import sys
from typing import Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIREMENTS = os.path.join(ROOT, "requirements.txt")
PACKAGES = ("libtpu", "jax", "jaxlib")

# libtpu off a TPU VM (a compile-only client, or TensorFlow's TPU build importing it) asks GCE's
# metadata server what TPU it is on, retrying for minutes; these answer for it (any TPU's values
# do: a compile-only client names its topology itself). One process per host is libtpu's default
# (/tmp/libtpu_lockfile); compiles and exports run beside each other and beside a training run.
OFF_TPU_ENVIRONMENT: Dict[str, str] = {
    "TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-4", "TPU_WORKER_ID": "0",
    "TPU_WORKER_HOSTNAMES": "localhost", "TPU_HOST_BOUNDS": "1,1,1",
    "TPU_CHIPS_PER_HOST_BOUNDS": "2,2,1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


class VersionError(RuntimeError):
  """An installed TPU package is not the pinned one; the message names both versions."""


def pinned(package: str) -> str:
  """The version requirements.txt pins `package` to (`package==X` on a line of its own)."""
  with open(REQUIREMENTS, encoding="utf-8") as f:
    for line in f:
      match = re.match(rf"{re.escape(package)}==([^\s#;]+)", line.strip())
      if match:
        return match.group(1)
  raise VersionError(f"{REQUIREMENTS} pins no version of {package}")


def installed(package: str) -> Optional[str]:
  """The version of `package` this Python has installed, or None."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def check(package: str = "libtpu") -> str:
  """The pinned version of `package`; VersionError where the installed one is another."""
  want, have = pinned(package), installed(package)
  if have != want:
    raise VersionError(
        f"{package} {have or '(not installed)'} is installed, but this project runs TPUs with "
        f"{package} {want} (requirements.txt; docs/tpu_software.md): run tpu_scripts/setup.sh "
        f"again, or `pip install -c constraints.txt {package}=={want}`")
  return want


def main(argv) -> int:
  failed = 0
  for package in argv[1:] or PACKAGES:
    try:
      print(f"{package} {check(package)} (pinned)")
    except VersionError as e:
      print(e, file=sys.stderr)
      failed = 1
  return failed


if __name__ == "__main__":
  sys.exit(main(sys.argv))
