#!/usr/bin/env bash
# Runs main.py --mode=eval (the latest checkpoint in model_dir) on every host of a TPU VM / pod.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: eval.sh --name NAME --zone ZONE --accelerator-type TYPE --gin_file FILE --model_dir gs://... [flags]

Evaluates the latest checkpoint in --model_dir on the TPU: starts, on every host (--worker=all on
pods), the detached job 'eval':
  ../venv/bin/python3 main.py --gin_file=... [--gin_bindings=...] --mode=eval --model_dir=gs://... --tpu=local
then streams worker 0's log until it ends and checks every host's exit status. Metrics go to the
log and to model_dir's summaries. Do not run it while a 'train' job runs on the same TPU.

Flags:
  --detach                  start the job and return at once (follow it with logs.sh --job eval --follow)
EOF2
  main_flags_help
  common_flags_help
}

WAIT=1
while (($#)); do
  if parse_common_flag "$@" || parse_main_flag "$@"; then
    shift "$FLAG_SHIFT"
    continue
  fi
  case "$1" in
    --detach)
      WAIT=0
      shift
      ;;
    *)
      die "unknown flag: $1"
      ;;
  esac
done

validate_target
validate_main_flags

note "evaluating $MODEL_DIR on $ACCELERATOR_TYPE '$TPU_NAME'"
launch_job eval eval "$TPU_FLAG" "$WAIT"
