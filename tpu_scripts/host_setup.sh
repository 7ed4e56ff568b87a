#!/usr/bin/env bash
# Runs ON a TPU VM host (setup.sh calls it over ssh on every host): installs Python, a venv with
# the project's pinned requirements, and the TPU build of TensorFlow.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: host_setup.sh [flags]

Runs on a TPU VM host, from the project copy BASE/src (setup.sh puts it there). Installs:
  1. PYTHON and its venv module from Ubuntu's packages (apt waits for the boot-time apt lock);
  2. the venv BASE/venv with requirements.txt pinned by constraints.txt (the same set CI tests);
  3. the TPU build of TensorFlow (tensorflow-tpu, same version as the pinned tensorflow) over the
     CPU build, then libtpu, both from PyPI plus Google's TPU TensorFlow index;
  4. pip check, and prints the TensorFlow and libtpu versions it ended with.
Running it again is safe: it reuses the venv and only changes what differs.

Flags:
  --python PYTHON           interpreter for the venv (default: python3.11, the version
                            constraints.txt was locked with)
  --tf-tpu-version VERSION  tensorflow-tpu version (default: 2.20.0, matching tensorflow==2.20.0)
  --libtpu-version VERSION  pin libtpu (default: unpinned, pip picks the newest libtpu that
                            tensorflow-tpu accepts)
  --tf-tpu-index URL        extra wheel index for tensorflow-tpu / libtpu
                            (default: https://storage.googleapis.com/libtpu-tf-releases/index.html)
  --base DIR                install base (default: the parent of the project copy)
  --dry-run                 print the commands and exit
  -h, --help                this help
EOF2
}

PYTHON="python3.11"
TF_TPU_VERSION="2.20.0"
LIBTPU_VERSION=""
TF_TPU_INDEX="https://storage.googleapis.com/libtpu-tf-releases/index.html"
BASE="$(cd "$TPU_SCRIPTS_DIR/../.." && pwd)"
while (($#)); do
  case "$1" in
    --python | --python=*)
      take_value --python "$@"
      PYTHON="$FLAG_VALUE"
      ;;
    --tf-tpu-version | --tf-tpu-version=*)
      take_value --tf-tpu-version "$@"
      TF_TPU_VERSION="$FLAG_VALUE"
      ;;
    --libtpu-version | --libtpu-version=*)
      take_value --libtpu-version "$@"
      LIBTPU_VERSION="$FLAG_VALUE"
      ;;
    --tf-tpu-index | --tf-tpu-index=*)
      take_value --tf-tpu-index "$@"
      TF_TPU_INDEX="$FLAG_VALUE"
      ;;
    --base | --base=*)
      take_value --base "$@"
      BASE="$FLAG_VALUE"
      ;;
    --dry-run)
      DRY_RUN=1
      FLAG_SHIFT=1
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      die "unknown flag: $1"
      ;;
  esac
  shift "$FLAG_SHIFT"
done
[[ "$PYTHON" =~ ^python3(\.[0-9]+)?$ ]] || die "--python must be python3 or python3.N, got '$PYTHON'"
[[ "$TF_TPU_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--tf-tpu-version must be X.Y.Z, got '$TF_TPU_VERSION'"
[[ -z "$LIBTPU_VERSION" || "$LIBTPU_VERSION" =~ ^[0-9][0-9a-z.]*$ ]] || die "--libtpu-version '$LIBTPU_VERSION' is not a version"

SRC="$BASE/src"
VENV="$BASE/venv"
PIP=("$VENV/bin/python3" -m pip)
libtpu="libtpu"
if [[ -n "$LIBTPU_VERSION" ]]; then
  libtpu="libtpu==$LIBTPU_VERSION"
fi

run sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q
run sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
  "$PYTHON" "$PYTHON-venv"
run "$PYTHON" -m venv "$VENV"
run "${PIP[@]}" install -q -r "$SRC/requirements.txt" -c "$SRC/constraints.txt"
# Same files as the CPU tensorflow wheel (which the pinned requirements need by name), built with
# TPU support: installed over it without touching the pinned dependencies.
run "${PIP[@]}" install -q --no-deps --force-reinstall "tensorflow-tpu==$TF_TPU_VERSION" -f "$TF_TPU_INDEX"
run "${PIP[@]}" install -q -c "$SRC/constraints.txt" "$libtpu" -f "$TF_TPU_INDEX"
run "${PIP[@]}" check
run "$VENV/bin/python3" -c 'import importlib.metadata as m, tensorflow as tf; print("tensorflow", tf.__version__, "| tensorflow-tpu", m.version("tensorflow-tpu"), "| libtpu", m.version("libtpu"))'
