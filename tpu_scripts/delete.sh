#!/usr/bin/env bash
# Deletes a TPU VM or pod slice (gcloud compute tpus tpu-vm delete), which stops its billing.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: delete.sh --name NAME --zone ZONE [flags]

Deletes the TPU without asking (gcloud --quiet). Everything on its hosts (the venv, logs/, the
project copy) goes with it; checkpoints and exports in the gs:// model_dir stay. A preempted Spot
or preemptible TPU must be deleted too before a TPU of the same name can be created again.
--accelerator-type is accepted (and checked) but not needed.

Flags:
  --async                   return without waiting for the deletion to finish
EOF2
  common_flags_help
}

ASYNC=0
while (($#)); do
  if parse_common_flag "$@"; then
    shift "$FLAG_SHIFT"
    continue
  fi
  case "$1" in
    --async)
      ASYNC=1
      shift
      ;;
    *)
      die "unknown flag: $1"
      ;;
  esac
done

validate_name
validate_zone
if [[ -n "$ACCELERATOR_TYPE" ]]; then
  validate_accelerator_type
fi

note "deleting TPU '$TPU_NAME' in $ZONE"
args=(--quiet)
if ((ASYNC)); then
  args+=(--async)
fi
gcloud_tpu delete "${args[@]}"
run "${GCLOUD_ARGS[@]}"
