#!/usr/bin/env bash
# Shows or streams the log of a job (train, eval, export) on a TPU VM host.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: logs.sh --name NAME --zone ZONE --accelerator-type TYPE [flags]

Prints the last lines of ~/REMOTE_DIR/logs/JOB.log on a host (worker 0 by default) and the job's
state; with --follow, keeps streaming until the job ends (Ctrl-C stops following, not the job).

Flags:
  --job JOB                 train (default), eval or export
  --worker W                host index, or 'all' (default: 0)
  --lines N                 how many lines (default: 100)
  --follow                  keep streaming while the job runs
  --status                  print only the job's state on each host (running / exited N / lost)
EOF2
  common_flags_help
}

JOB="train"
WORKER=""
LINES=100
FOLLOW=0
STATUS=0
while (($#)); do
  if parse_common_flag "$@"; then
    shift "$FLAG_SHIFT"
    continue
  fi
  case "$1" in
    --job | --job=*)
      take_value --job "$@"
      JOB="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --worker | --worker=*)
      take_value --worker "$@"
      WORKER="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --lines | --lines=*)
      take_value --lines "$@"
      LINES="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --follow)
      FOLLOW=1
      shift
      ;;
    --status)
      STATUS=1
      shift
      ;;
    *)
      die "unknown flag: $1"
      ;;
  esac
done

validate_target
[[ "$JOB" =~ ^[A-Za-z0-9_-]+$ ]] || die "--job must be a job name such as train, eval or export"
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines needs a number, got '$LINES'"
hosts="$(accelerator_hosts "$ACCELERATOR_TYPE")"
if [[ -n "$WORKER" && "$WORKER" != all ]]; then
  if ! [[ "$WORKER" =~ ^[0-9]+$ ]] || ((WORKER >= hosts)); then
    die "--worker must be 'all' or a host index below $hosts for $ACCELERATOR_TYPE, got '$WORKER'"
  fi
fi
target=()
if [[ -n "$WORKER" ]]; then
  target=("--worker=$WORKER")
elif ((hosts > 1)); then
  target=(--worker=0)
fi

if ((STATUS)); then
  remote_ssh "${target[@]}" "$(host_job_command status "$JOB")"
elif ((FOLLOW)); then
  remote_ssh "${target[@]}" "$(host_job_command logs "$JOB" --lines "$LINES" --follow)"
else
  remote_ssh "${target[@]}" "$(host_job_command logs "$JOB" --lines "$LINES")"
fi
