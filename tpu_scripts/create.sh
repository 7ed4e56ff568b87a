#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice (gcloud compute tpus tpu-vm create).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: create.sh --name NAME --zone ZONE --accelerator-type TYPE [flags]

Creates a TPU VM (one host, e.g. v3-8) or a pod slice (several hosts, e.g. v3-32, v4-32) and
waits until it is READY. Billing starts now and stops only when delete.sh has run.

Flags:
  --runtime-version VERSION  TPU software version (image). Default per accelerator family:
                             tpu-ubuntu2204-base (v2, v3, v4), v2-alpha-tpuv5-lite (v5litepod),
                             v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e); TensorFlow itself is
                             installed by setup.sh. A tpu-vm-tf-* image also works.
  --spot                     Spot TPU: much cheaper, may be preempted at any time
  --preemptible              preemptible TPU (older kind of Spot; also time-limited to 24 h)
EOF2
  common_flags_help
}

RUNTIME_VERSION=""
CAPACITY=""
while (($#)); do
  if parse_common_flag "$@"; then
    shift "$FLAG_SHIFT"
    continue
  fi
  case "$1" in
    --runtime-version | --runtime-version=* | --version | --version=*)
      take_value "${1%%=*}" "$@"
      RUNTIME_VERSION="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --spot | --preemptible)
      [[ -z "$CAPACITY" || "$CAPACITY" == "$1" ]] || die "--spot and --preemptible exclude each other"
      CAPACITY="$1"
      shift
      ;;
    *)
      die "unknown flag: $1"
      ;;
  esac
done

validate_name
validate_zone
validate_accelerator_type
if [[ -z "$RUNTIME_VERSION" ]]; then
  RUNTIME_VERSION="$(default_runtime_version "$ACCELERATOR_TYPE")"
fi
[[ "$RUNTIME_VERSION" =~ ^[a-z0-9][-a-z0-9.]*$ ]] || die "--runtime-version '$RUNTIME_VERSION' is not a TPU software version name"

note "creating $ACCELERATOR_TYPE ($(accelerator_hosts "$ACCELERATOR_TYPE") host(s)) '$TPU_NAME' in $ZONE, runtime $RUNTIME_VERSION${CAPACITY:+, ${CAPACITY#--}}"
args=("--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
if [[ -n "$CAPACITY" ]]; then
  args+=("$CAPACITY")
fi
gcloud_tpu create "${args[@]}"
run "${GCLOUD_ARGS[@]}"
