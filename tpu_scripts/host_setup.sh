#!/usr/bin/env bash
# Runs ON a TPU VM host (setup.sh calls it over ssh on every host): installs Python, a venv with
# the project's pinned requirements (libtpu and JAX among them), and the TPU build of TensorFlow.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: host_setup.sh [flags]

Runs on a TPU VM host, from the project copy BASE/src (setup.sh puts it there). Installs exactly
the pinned set, all from PyPI:
  1. PYTHON and its venv module from Ubuntu's packages (apt waits for the boot-time apt lock);
  2. the venv BASE/venv with requirements.txt pinned by constraints.txt (the same set CI tests),
     which pins the TPU software too: libtpu==0.0.14, the libtpu TensorFlow 2.20's TPU build
     declares (libtpu 0.0.32 and newer abort TensorFlow's import), and the jax / jaxlib whose
     kernels that libtpu reads (docs/tpu_software.md);
  3. the TPU build of TensorFlow (tensorflow-tpu, the version of requirements.txt's tensorflow
     pin) over the CPU build, without dependencies;
  4. pip check, then `python -m official_halonet.kernels.tpu_software`, which prints the libtpu,
     jax and jaxlib versions and fails the setup where one differs from its pin.
Running it again is safe: it reuses the venv and only changes what differs.

Flags:
  --python PYTHON           interpreter for the venv (default: python3.11, the version
                            constraints.txt was locked with)
  --base DIR                install base (default: the parent of the project copy)
  --dry-run                 print the commands and exit
  -h, --help                this help
EOF2
}

# pinned_tensorflow REQUIREMENTS: prints the version of the `tensorflow==X.Y.Z` line, which the
# TPU build must match (it replaces the CPU build's files).
pinned_tensorflow() {
  local requirements="$1" version
  [[ -f "$requirements" ]] ||
    die "no $requirements: host_setup.sh installs the project copy in BASE/src (--base BASE)"
  version="$(sed -n '/^tensorflow==/{s/^tensorflow==\([^[:space:]#;]*\).*/\1/p;q;}' "$requirements")"
  [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "$requirements pins no tensorflow==X.Y.Z (found '$version')"
  printf '%s\n' "$version"
}

PYTHON="python3.11"
BASE="$(cd "$TPU_SCRIPTS_DIR/../.." && pwd)"
while (($#)); do
  case "$1" in
    --python | --python=*)
      take_value --python "$@"
      PYTHON="$FLAG_VALUE"
      ;;
    --base | --base=*)
      take_value --base "$@"
      BASE="$FLAG_VALUE"
      ;;
    --dry-run)
      # shellcheck disable=SC2034  # read by run() in common.sh
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

SRC="$BASE/src"
VENV="$BASE/venv"
PIP=("$VENV/bin/python3" -m pip)
TF_TPU_VERSION="$(pinned_tensorflow "$SRC/requirements.txt")"

run sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q
run sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
  "$PYTHON" "$PYTHON-venv"
run "$PYTHON" -m venv "$VENV"
run "${PIP[@]}" install -q -r "$SRC/requirements.txt" -c "$SRC/constraints.txt"
# Same files as the CPU tensorflow wheel (which the pinned requirements need by name), built with
# TPU support: installed over it without touching the pinned dependencies (libtpu among them).
run "${PIP[@]}" install -q --no-deps --force-reinstall "tensorflow-tpu==$TF_TPU_VERSION"
run "${PIP[@]}" check
run env "PYTHONPATH=$SRC" "$VENV/bin/python3" -m official_halonet.kernels.tpu_software
