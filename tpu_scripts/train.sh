#!/usr/bin/env bash
# Launches main.py training with gin files on every host of a TPU VM / pod.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: train.sh --name NAME --zone ZONE --accelerator-type TYPE --gin_file FILE --model_dir gs://... [flags]

Starts, on every host (--worker=all on pods), from ~/REMOTE_DIR/src:
  ../venv/bin/python3 main.py --gin_file=... [--gin_bindings=...] --mode=MODE --model_dir=gs://... --tpu=local
as the detached job 'train' (it keeps running when ssh drops; log in ~/REMOTE_DIR/logs/train.log),
then streams worker 0's log until training ends and checks that every host exited with 0.
Training resumes from the latest checkpoint in --model_dir, so running it again after a
preemption continues where the last checkpoint left off.

Flags:
  --mode MODE               train_and_eval (default) or train
  --detach                  start the job and return at once (follow it with logs.sh --follow)
EOF2
  main_flags_help
  common_flags_help
}

MODE="train_and_eval"
WAIT=1
while (($#)); do
  if parse_common_flag "$@" || parse_main_flag "$@"; then
    shift "$FLAG_SHIFT"
    continue
  fi
  case "$1" in
    --mode | --mode=*)
      take_value --mode "$@"
      MODE="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
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
case "$MODE" in
  train | train_and_eval) ;;
  *) die "--mode must be train or train_and_eval for train.sh (eval.sh and export.sh do the others), got '$MODE'" ;;
esac

note "training on $ACCELERATOR_TYPE '$TPU_NAME' ($(accelerator_hosts "$ACCELERATOR_TYPE") host(s)), model_dir $MODEL_DIR"
launch_job train "$MODE" "$TPU_FLAG" "$WAIT"
