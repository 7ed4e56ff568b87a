#!/usr/bin/env bash
# End to end from one command: create the TPU, install the project, train with gin files, export,
# delete the TPU.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: run.sh --name NAME --zone ZONE --accelerator-type TYPE --gin_file FILE --model_dir gs://... [flags]

Runs create.sh -> setup.sh -> train.sh -> export.sh -> delete.sh with the flags below passed to
each. The TPU is deleted at the end, also when a step fails or the run is interrupted (Ctrl-C),
unless --keep-tpu is given: checkpoints and exports are in the gs:// model_dir, so rerunning the
same command after a preemption or failure resumes training from the latest checkpoint.

Flags:
  --runtime-version V, --spot, --preemptible          passed to create.sh
  --ref, --python                                     passed to setup.sh
  --mode train_and_eval|train                         passed to train.sh (default: train_and_eval)
  --skip-create             use an existing TPU of this name (no create.sh; setup.sh still runs)
  --skip-setup              the TPU already has the project installed
  --skip-export             no export.sh after training
  --keep-tpu                do not delete the TPU at the end (it keeps billing)
EOF2
  main_flags_help
  common_flags_help
}

CREATE_ARGS=()
SETUP_ARGS=()
TRAIN_ARGS=()
SKIP_CREATE=0
SKIP_SETUP=0
SKIP_EXPORT=0
KEEP_TPU=0
while (($#)); do
  if parse_common_flag "$@" || parse_main_flag "$@"; then
    shift "$FLAG_SHIFT"
    continue
  fi
  case "$1" in
    --spot | --preemptible)
      CREATE_ARGS+=("$1")
      shift
      ;;
    --runtime-version | --runtime-version=*)
      take_value "${1%%=*}" "$@"
      CREATE_ARGS+=("${1%%=*}" "$FLAG_VALUE")
      shift "$FLAG_SHIFT"
      ;;
    --ref | --ref=* | --python | --python=*)
      take_value "${1%%=*}" "$@"
      SETUP_ARGS+=("${1%%=*}" "$FLAG_VALUE")
      shift "$FLAG_SHIFT"
      ;;
    --mode | --mode=*)
      take_value --mode "$@"
      TRAIN_ARGS+=(--mode "$FLAG_VALUE")
      shift "$FLAG_SHIFT"
      ;;
    --skip-create)
      SKIP_CREATE=1
      shift
      ;;
    --skip-setup)
      SKIP_SETUP=1
      shift
      ;;
    --skip-export)
      SKIP_EXPORT=1
      shift
      ;;
    --keep-tpu)
      KEEP_TPU=1
      shift
      ;;
    *)
      die "unknown flag: $1"
      ;;
  esac
done

# Everything is checked here, before the first (billable) step.
validate_target
validate_main_flags

COMMON=(--name "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR_TYPE" --remote-dir "$REMOTE_DIR")
if [[ -n "$PROJECT" ]]; then
  COMMON+=(--project "$PROJECT")
fi
if ((DRY_RUN)); then
  COMMON+=(--dry-run)
fi
MAIN=()
for f in "${GIN_FILES[@]}"; do
  MAIN+=(--gin_file "$f")
done
for b in "${GIN_BINDINGS[@]}"; do
  MAIN+=(--gin_bindings "$b")
done
for e in "${REMOTE_ENV[@]}"; do
  MAIN+=(--env "$e")
done
MAIN+=(--model_dir "$MODEL_DIR" --tpu "$TPU_FLAG")
if ((${#EXTRA_MAIN_FLAGS[@]} > 0)); then
  MAIN+=(-- "${EXTRA_MAIN_FLAGS[@]}")
fi

HERE="$TPU_SCRIPTS_DIR"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((KEEP_TPU)); then
    note "keeping TPU '$TPU_NAME' (--keep-tpu): delete it with tpu_scripts/delete.sh --name $TPU_NAME --zone $ZONE"
  else
    "$HERE/delete.sh" "${COMMON[@]}" || rc=$?
  fi
  exit "$rc"
}

if ((!SKIP_CREATE)); then
  # No trap yet: when create fails (for example because a TPU of this name already exists), that
  # TPU is not ours to delete.
  "$HERE/create.sh" "${COMMON[@]}" "${CREATE_ARGS[@]}"
fi
# From here on the TPU bills, so deleting it is what happens on any exit (unless --keep-tpu).
trap cleanup EXIT
trap 'exit 130' INT TERM
if ((!SKIP_SETUP)); then
  "$HERE/setup.sh" "${COMMON[@]}" "${SETUP_ARGS[@]}"
fi
"$HERE/train.sh" "${COMMON[@]}" "${MAIN[@]}" "${TRAIN_ARGS[@]}"
if ((!SKIP_EXPORT)); then
  "$HERE/export.sh" "${COMMON[@]}" "${MAIN[@]}"
fi
