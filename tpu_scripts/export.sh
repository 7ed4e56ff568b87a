#!/usr/bin/env bash
# Runs main.py --mode=export on a TPU VM host: SavedModel / TF Hub modules written under model_dir on GCS.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: export.sh --name NAME --zone ZONE --accelerator-type TYPE --gin_file FILE --model_dir gs://... [flags]

Exports the latest checkpoint in --model_dir (SavedModel and TF Hub modules, written by main.py
to GCS under model_dir). Runs as the job 'export' on worker 0 only, on its CPU (no --tpu flag),
since exporting needs no TPU; main.py writes straight to gs://, nothing stays on the host:
  ../venv/bin/python3 main.py --gin_file=... [--gin_bindings=...] --mode=export --model_dir=gs://...

Flags:
  --on-tpu                  run on every host with --tpu=local instead (TPUStrategy on a pod needs
                            every host)
EOF2
  main_flags_help
  common_flags_help
}

ON_TPU=0
while (($#)); do
  if parse_common_flag "$@" || parse_main_flag "$@"; then
    shift "$FLAG_SHIFT"
    continue
  fi
  case "$1" in
    --on-tpu)
      ON_TPU=1
      shift
      ;;
    *)
      die "unknown flag: $1"
      ;;
  esac
done

validate_target
validate_main_flags

note "exporting $MODEL_DIR from $ACCELERATOR_TYPE '$TPU_NAME'"
if ((ON_TPU)); then
  launch_job export export "$TPU_FLAG" 1
elif is_pod; then
  launch_job export export "" 1 0
else
  launch_job export export "" 1
fi
