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
  4. pip check, and prints the TensorFlow and libtpu versions it ended with;
  5. with --tpu-env, the side environment that makes the fused attention kernels
     (experiment.fused_attention = 'tpu'; JAX needs Python 3.12, which Ubuntu 22.04 lacks): uv
     (pinned) from PyPI, its Python 3.12, the venv BASE/tpu-venv with requirements-tpu.txt pinned
     by constraints-tpu.txt, linked as src/.tpu-venv where the project looks for it.
Running it again is safe: it reuses the venvs and only changes what differs.

Flags:
  --python PYTHON           interpreter for the venv (default: python3.11, the version
                            constraints.txt was locked with)
  --tf-tpu-version VERSION  tensorflow-tpu version (default: 2.20.0, matching tensorflow==2.20.0)
  --libtpu-version VERSION  pin libtpu (default: unpinned, pip picks the newest libtpu that
                            tensorflow-tpu accepts)
  --tf-tpu-index URL        extra wheel index for tensorflow-tpu / libtpu
                            (default: https://storage.googleapis.com/libtpu-tf-releases/index.html)
  --tpu-env                 also install the fused attention kernels' side environment (step 5)
  --base DIR                install base (default: the parent of the project copy)
  --dry-run                 print the commands and exit
  -h, --help                this help
EOF2
}

PYTHON="python3.11"
TF_TPU_VERSION="2.20.0"
LIBTPU_VERSION=""
TF_TPU_INDEX="https://storage.googleapis.com/libtpu-tf-releases/index.html"
TPU_ENV=0
UV_VERSION="0.13.9"
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
    --tpu-env)
      TPU_ENV=1
      FLAG_SHIFT=1
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
if ((TPU_ENV)); then
  UV="$VENV/bin/uv"
  run "${PIP[@]}" install -q "uv==$UV_VERSION"
  run "$UV" python install 3.12
  run "$UV" venv --allow-existing --python 3.12 "$BASE/tpu-venv"
  run "$UV" pip install -q --python "$BASE/tpu-venv/bin/python" -r "$SRC/requirements-tpu.txt" \
    -c "$SRC/constraints-tpu.txt"
  run "$UV" pip check --python "$BASE/tpu-venv/bin/python"
  run ln -sfn "$BASE/tpu-venv" "$SRC/.tpu-venv"
fi
