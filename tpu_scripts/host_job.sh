#!/usr/bin/env bash
# Runs ON a TPU VM host (train.sh / eval.sh / export.sh / logs.sh call it over ssh): starts a
# command as a named job that survives the ssh session, waits for it while streaming its log, and
# reports its exit status. Each host of a pod keeps its own job files.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: host_job.sh ACTION JOB [flags] [-- COMMAND...]

Runs on a TPU VM host. Job files live in BASE/jobs (pid, exit status, command) and BASE/logs/JOB.log;
BASE defaults to the folder that holds the project copy (REMOTE_DIR, i.e. ~/halonet).

Actions:
  start JOB -- COMMAND...   start COMMAND in its own session (immune to the ssh session ending),
                            stdout and stderr to logs/JOB.log (the previous log moves to JOB.log.prev);
                            refuses when JOB is already running
  wait JOB                  stream logs/JOB.log until JOB ends, then exit with JOB's exit status
                            (1 when JOB vanished without one, e.g. the host was preempted or rebooted)
  status JOB                print 'running', 'exited N', 'lost' or 'never started'; exit 0
  logs JOB                  print the last --lines lines of logs/JOB.log (--follow: keep following
                            while JOB runs)

Flags:
  --base DIR                job folder base (default: the parent of the project copy)
  --quiet                   wait: print only the final status line (and the log tail on failure)
  --lines N                 logs: number of lines (default 100)
  --follow                  logs: keep streaming while the job runs
  -h, --help                this help
EOF
}

ACTION=""
JOB=""
BASE="$(cd "$TPU_SCRIPTS_DIR/../.." && pwd)"
QUIET=0
LINES=100
FOLLOW=0
COMMAND=()

while (($#)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --base | --base=*)
      take_value --base "$@"
      BASE="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --quiet)
      QUIET=1
      shift
      ;;
    --follow)
      FOLLOW=1
      shift
      ;;
    --lines | --lines=*)
      take_value --lines "$@"
      LINES="$FLAG_VALUE"
      [[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines needs a number, got '$LINES'"
      shift "$FLAG_SHIFT"
      ;;
    --)
      shift
      COMMAND=("$@")
      break
      ;;
    -*)
      die "unknown flag: $1"
      ;;
    *)
      if [[ -z "$ACTION" ]]; then
        ACTION="$1"
      elif [[ -z "$JOB" ]]; then
        JOB="$1"
      else
        die "unexpected argument: $1"
      fi
      shift
      ;;
  esac
done

case "$ACTION" in
  start | wait | status | logs | _run) ;;
  "") die "an action is required: start, wait, status or logs" ;;
  *) die "unknown action '$ACTION' (start, wait, status, logs)" ;;
esac
[[ "$JOB" =~ ^[A-Za-z0-9_-]+$ ]] || die "a job name of letters, digits, '_' or '-' is required"

JOBS_DIR="$BASE/jobs"
LOG="$BASE/logs/$JOB.log"
PID_FILE="$JOBS_DIR/$JOB.pid"
EXIT_FILE="$JOBS_DIR/$JOB.exit"

job_pid() {
  [[ -f "$PID_FILE" ]] && cat "$PID_FILE"
}

job_running() {
  local pid
  pid="$(job_pid)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# Sets STATE ('running', 'exited N', 'lost' or 'never started') and STATE_CODE (N for 'exited N',
# 0 while running, 1 otherwise).
STATE=""
STATE_CODE=1
job_state() {
  if job_running; then
    STATE=running
    STATE_CODE=0
  elif [[ -f "$EXIT_FILE" ]]; then
    STATE_CODE="$(cat "$EXIT_FILE")"
    STATE="exited $STATE_CODE"
  elif [[ -f "$PID_FILE" ]]; then
    STATE=lost
    STATE_CODE=1
  else
    STATE="never started"
    STATE_CODE=1
  fi
}

case "$ACTION" in
  _run)
    # Internal: the detached body of 'start'. Records its pid, runs the command, records the status.
    echo "$$" >"$PID_FILE"
    rc=0
    "${COMMAND[@]}" || rc=$?
    echo "$rc" >"$EXIT_FILE.tmp"
    mv "$EXIT_FILE.tmp" "$EXIT_FILE"
    exit "$rc"
    ;;
  start)
    ((${#COMMAND[@]} > 0)) || die "start needs a command after --"
    if job_running; then
      die "job '$JOB' is already running on $(hostname) (pid $(job_pid)); use wait or logs"
    fi
    mkdir -p "$JOBS_DIR" "$BASE/logs"
    rm -f "$PID_FILE" "$EXIT_FILE"
    if [[ -f "$LOG" ]]; then
      mv "$LOG" "$LOG.prev"
    fi
    shell_quote "${COMMAND[@]}" >"$JOBS_DIR/$JOB.cmd"
    echo >>"$JOBS_DIR/$JOB.cmd"
    {
      printf '=== %s on %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(hostname)" "$(cat "$JOBS_DIR/$JOB.cmd")"
    } >"$LOG"
    setsid bash "${BASH_SOURCE[0]}" _run "$JOB" --base "$BASE" -- "${COMMAND[@]}" \
      >>"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 100); do
      [[ -s "$PID_FILE" ]] && break
      sleep 0.05
    done
    [[ -s "$PID_FILE" ]] || die "job '$JOB' did not start; see $LOG"
    printf 'started job %s on %s (pid %s), log %s\n' "$JOB" "$(hostname)" "$(job_pid)" "$LOG"
    ;;
  wait)
    [[ -f "$PID_FILE" ]] || die "job '$JOB' was never started on $(hostname)"
    if ((QUIET)); then
      while job_running; do
        sleep 10
      done
    else
      tail -n +1 -F --pid="$(job_pid)" "$LOG" 2>/dev/null || true
      # tail stops when the pid is gone; the status file is written just before that.
    fi
    job_state
    printf 'job %s on %s: %s\n' "$JOB" "$(hostname)" "$STATE"
    if [[ "$STATE" != "exited 0" ]] && ((QUIET)); then
      tail -n 50 "$LOG" || true
    fi
    exit "$STATE_CODE"
    ;;
  status)
    job_state
    echo "$STATE"
    ;;
  logs)
    [[ -f "$LOG" ]] || die "no log for job '$JOB' on $(hostname) ($LOG)"
    if ((FOLLOW)) && job_running; then
      tail -n "$LINES" -F --pid="$(job_pid)" "$LOG" 2>/dev/null || true
    else
      tail -n "$LINES" "$LOG"
    fi
    ;;
esac
