# shellcheck shell=bash disable=SC2034  # variables here are read by the scripts that source it
# Shared by every script in tpu_scripts/ (sourced, never executed): flag parsing, validation of
# TPU names / zones / accelerator types, and `run`, which prints a command under --dry-run and
# executes it otherwise. The host-side scripts (host_setup.sh, host_job.sh) source it too, on the
# TPU VM, from the project copy that setup.sh ships there.

# Defaults; flags override them, environment variables preset them so a session can export once.
TPU_NAME="${HALONET_TPU_NAME:-}"
ZONE="${HALONET_ZONE:-}"
PROJECT="${HALONET_PROJECT:-}"
ACCELERATOR_TYPE="${HALONET_ACCELERATOR_TYPE:-}"
# Folder under the TPU VM user's home that holds src/ (the project), venv/, logs/ and jobs/.
REMOTE_DIR="${HALONET_REMOTE_DIR:-halonet}"
DRY_RUN=0
FLAG_VALUE=""
FLAG_SHIFT=0
SCRIPT_NAME="$(basename "$0")"
TPU_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$SCRIPT_NAME" >&2
  exit 2
}

note() {
  printf '==> %s\n' "$*" >&2
}

# shell_quote ARG...: one line that a POSIX shell splits back into exactly these arguments.
# Plain words stay bare; anything else is single-quoted (an embedded ' becomes '\'').
shell_quote() {
  local out="" a q="'" esc="'\\''"
  for a in "$@"; do
    if [[ -n "$a" && "$a" =~ ^[A-Za-z0-9_./:=@,+%^-]+$ ]]; then
      out+="$a "
    else
      out+="'${a//$q/$esc}' "
    fi
  done
  printf '%s' "${out% }"
}

# run CMD ARG...: under --dry-run print the command (one line, quoted so it can be pasted) on
# stdout; otherwise echo it to stderr with a '+ ' prefix and execute it.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(shell_quote "$@")"
    return 0
  fi
  printf '+ %s\n' "$(shell_quote "$@")" >&2
  "$@"
}

# take_value FLAG ARGS...: reads the value of FLAG from "--flag=value" or "--flag value".
# Sets FLAG_VALUE and FLAG_SHIFT (how many arguments were consumed).
take_value() {
  local flag="$1"
  shift
  if [[ "$1" == "$flag="* ]]; then
    FLAG_VALUE="${1#*=}"
    FLAG_SHIFT=1
  else
    if (($# < 2)) || [[ "$2" == --* ]]; then
      die "$flag needs a value"
    fi
    FLAG_VALUE="$2"
    FLAG_SHIFT=2
  fi
}

common_flags_help() {
  cat <<'EOF'
Common flags (each may also be preset by the environment variable in brackets):
  --name NAME               TPU VM / pod slice name [HALONET_TPU_NAME]
  --zone ZONE               Compute zone, e.g. europe-west4-a (required) [HALONET_ZONE]
  --project PROJECT         GCP project; gcloud's configured project when omitted [HALONET_PROJECT]
  --accelerator-type TYPE   v2-8, v3-8..v3-2048, v4-8.., v5litepod-1..256, v5p-8.., v6e-1..256
                            [HALONET_ACCELERATOR_TYPE]; slices of more than one host are pods and
                            get --worker=all on every ssh / scp
  --remote-dir DIR          folder under the TPU VM home for src/, venv/, logs/, jobs/
                            (default: halonet) [HALONET_REMOTE_DIR]
  --dry-run                 print every command (one per line, exactly as it would run) and exit 0
                            without running any of them
  -h, --help                this help
EOF
}

# parse_common_flag ARGS...: consumes one common flag; returns 1 when $1 is not one.
parse_common_flag() {
  case "$1" in
    --name | --name=*)
      take_value --name "$@"
      TPU_NAME="$FLAG_VALUE"
      ;;
    --zone | --zone=*)
      take_value --zone "$@"
      ZONE="$FLAG_VALUE"
      ;;
    --project | --project=*)
      take_value --project "$@"
      PROJECT="$FLAG_VALUE"
      ;;
    --accelerator-type | --accelerator-type=*)
      take_value --accelerator-type "$@"
      ACCELERATOR_TYPE="$FLAG_VALUE"
      ;;
    --remote-dir | --remote-dir=*)
      take_value --remote-dir "$@"
      REMOTE_DIR="$FLAG_VALUE"
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
      return 1
      ;;
  esac
  return 0
}

validate_name() {
  [[ -n "$TPU_NAME" ]] || die "--name is required (the TPU VM name)"
  [[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "--name '$TPU_NAME' is not a valid TPU name (lower-case letters, digits and '-', starting with a letter, at most 63 characters)"
}

validate_zone() {
  [[ -n "$ZONE" ]] || die "--zone is required (e.g. europe-west4-a, us-central1-a, us-central2-b)"
  [[ "$ZONE" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] ||
    die "--zone '$ZONE' is not a zone name like europe-west4-a"
}

validate_remote_dir() {
  [[ "$REMOTE_DIR" =~ ^[A-Za-z0-9_.][A-Za-z0-9_./-]*$ && "$REMOTE_DIR" != *..* ]] ||
    die "--remote-dir '$REMOTE_DIR' must be a relative path of letters, digits, '_', '-', '.', '/'"
}

# validate_target: the checks every script that reaches the hosts makes (name, zone, type, dir).
validate_target() {
  validate_name
  validate_zone
  validate_accelerator_type
  validate_remote_dir
}

KNOWN_ACCELERATORS="v2-{8,32,128,256,512}, v3-{8,32,64,128,256,512,1024,2048}, v4-N and v5p-N (N a multiple of 8; v4 up to 8192, v5p up to 17920), v5litepod-{1,4,8,16,32,64,128,256}, v6e-{1,4,8,16,32,64,128,256}"

# accelerator_hosts TYPE: prints how many TPU VM hosts a slice of TYPE has; fails when TYPE is not
# a known accelerator type. v2-v5p types count TensorCores (8 per host); v5litepod / v6e types count
# chips (up to 8 on a single host, 4 per host in multi-host slices).
accelerator_hosts() {
  local t="$1" family n
  family="${t%-*}"
  n="${t##*-}"
  [[ "$t" == *-* && "$n" =~ ^[1-9][0-9]*$ ]] || return 1
  case "$family" in
    v2)
      case "$n" in 8 | 32 | 128 | 256 | 512) ;; *) return 1 ;; esac
      echo $((n / 8))
      ;;
    v3)
      case "$n" in 8 | 32 | 64 | 128 | 256 | 512 | 1024 | 2048) ;; *) return 1 ;; esac
      echo $((n / 8))
      ;;
    v4 | v5p)
      local max=8192
      [[ "$family" == v5p ]] && max=17920
      ((n % 8 == 0 && n <= max)) || return 1
      echo $((n / 8))
      ;;
    v5litepod | v6e)
      case "$n" in 1 | 4 | 8 | 16 | 32 | 64 | 128 | 256) ;; *) return 1 ;; esac
      if ((n <= 8)); then echo 1; else echo $((n / 4)); fi
      ;;
    *)
      return 1
      ;;
  esac
}

# published_accelerator_type: prints the slice the first published --gin_file is published for on
# $TPU_GENERATION (official_halonet/tpu/slices.py, standard-library Python); fails when none is.
published_accelerator_type() {
  local f
  for f in "${GIN_FILES[@]}"; do
    python3 "$TPU_SCRIPTS_DIR/../official_halonet/tpu/slices.py" "$f" "$TPU_GENERATION" 2>/dev/null &&
      return 0
  done
  return 1
}

validate_accelerator_type() {
  if [[ -z "$ACCELERATOR_TYPE" ]] && ((${#GIN_FILES[@]})); then
    ACCELERATOR_TYPE="$(published_accelerator_type)" || ACCELERATOR_TYPE=""
    [[ -z "$ACCELERATOR_TYPE" ]] ||
      note "--accelerator-type $ACCELERATOR_TYPE: the slice ${GIN_FILES[0]} is published for on $TPU_GENERATION"
  fi
  [[ -n "$ACCELERATOR_TYPE" ]] || die "--accelerator-type is required (e.g. v3-8, v4-32; a published --gin_file gives its own). Known: $KNOWN_ACCELERATORS"
  accelerator_hosts "$ACCELERATOR_TYPE" >/dev/null ||
    die "unknown accelerator type '$ACCELERATOR_TYPE'. Known: $KNOWN_ACCELERATORS"
}

is_pod() {
  (($(accelerator_hosts "$ACCELERATOR_TYPE") > 1))
}

# default_runtime_version TYPE: the Cloud TPU base image for the accelerator family. TensorFlow is
# not taken from the image: setup.sh installs the pinned TPU build of TensorFlow into a venv.
default_runtime_version() {
  case "${1%-*}" in
    v2 | v3 | v4) echo "tpu-ubuntu2204-base" ;;
    v5litepod) echo "v2-alpha-tpuv5-lite" ;;
    v5p) echo "v2-alpha-tpuv5" ;;
    v6e) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}

# gcloud_tpu VERB [ARGS...]: the gcloud command line for a TPU VM verb, with name, zone, project.
GCLOUD_ARGS=()
gcloud_tpu() {
  local verb="$1"
  shift
  GCLOUD_ARGS=(gcloud compute tpus tpu-vm "$verb" "$TPU_NAME" "--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then
    GCLOUD_ARGS+=("--project=$PROJECT")
  fi
  GCLOUD_ARGS+=("$@")
}

# worker_flag: --worker=all on pods (every host must run the same program), nothing on one host.
WORKER_ARGS=()
set_worker_args() {
  WORKER_ARGS=()
  if is_pod; then
    WORKER_ARGS=(--worker=all)
  fi
}

# remote_ssh [--worker=W] REMOTE_COMMAND: ssh into the TPU VM hosts and run one shell command
# (workers: all hosts of a pod unless --worker= is given).
remote_ssh() {
  local workers=()
  if [[ "$1" == --worker=* ]]; then
    workers=("$1")
    shift
  else
    set_worker_args
    workers=("${WORKER_ARGS[@]}")
  fi
  gcloud_tpu ssh "${workers[@]}" "--command=$1"
  run "${GCLOUD_ARGS[@]}"
}

# ---------------------------------------------------------------------------------------------
# main.py launching, shared by train.sh, eval.sh, export.sh and run.sh.

GIN_FILES=()
GIN_BINDINGS=()
TPU_GENERATION="${HALONET_TPU_GENERATION:-v4}"
MODEL_DIR=""
TPU_FLAG="local"
REMOTE_ENV=()
EXTRA_MAIN_FLAGS=()

main_flags_help() {
  cat <<'EOF2'
main.py flags (passed through to every host unchanged):
  --gin_file FILE           gin file, relative to the project root (e.g. gin/h0.gin); repeatable,
                            applied in order; at least one is required
  --gin_bindings BINDING    one gin binding, e.g. 'Trainer.train_steps = 1000'; repeatable
                            (--gin_params is accepted as the same flag)
  --model_dir gs://...      checkpoints, summaries, operative config and exports (required; must
                            be on GCS: every host of a pod writes and reads it)
  --tpu VALUE               main.py's --tpu on the hosts (default: local, each TPU VM host's own chips)
  --generation GEN          v4 or v5litepod: without --accelerator-type, the slice of that generation
                            a published gin file is published for (default v4) [HALONET_TPU_GENERATION]
  --env KEY=VALUE           set an environment variable for main.py on the hosts; repeatable
  -- FLAG...                everything after '--' is appended to main.py's flags verbatim
EOF2
}

# parse_main_flag ARGS...: consumes one main.py flag; returns 1 when $1 is not one.
parse_main_flag() {
  case "$1" in
    --gin_file | --gin_file=*)
      take_value --gin_file "$@"
      GIN_FILES+=("$FLAG_VALUE")
      ;;
    --gin_bindings | --gin_bindings=*)
      take_value --gin_bindings "$@"
      GIN_BINDINGS+=("$FLAG_VALUE")
      ;;
    --gin_params | --gin_params=*)
      take_value --gin_params "$@"
      GIN_BINDINGS+=("$FLAG_VALUE")
      ;;
    --model_dir | --model_dir=*)
      take_value --model_dir "$@"
      MODEL_DIR="$FLAG_VALUE"
      ;;
    --tpu | --tpu=*)
      take_value --tpu "$@"
      [[ "$FLAG_VALUE" =~ ^[a-z0-9][-a-z0-9_.:/]*$ ]] || die "--tpu '$FLAG_VALUE' is not a TPU name or 'local'"
      TPU_FLAG="$FLAG_VALUE"
      ;;
    --generation | --generation=*)
      take_value --generation "$@"
      [[ "$FLAG_VALUE" == v4 || "$FLAG_VALUE" == v5litepod ]] || die "--generation must be v4 or v5litepod, got '$FLAG_VALUE'"
      TPU_GENERATION="$FLAG_VALUE"
      ;;
    --env | --env=*)
      take_value --env "$@"
      [[ "$FLAG_VALUE" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, got '$FLAG_VALUE'"
      REMOTE_ENV+=("$FLAG_VALUE")
      ;;
    --)
      shift
      EXTRA_MAIN_FLAGS+=("$@")
      FLAG_SHIFT=$(($# + 1))
      ;;
    *)
      return 1
      ;;
  esac
  return 0
}

# add_published_bindings: puts before the user's --gin_bindings the ones the first published
# --gin_file is published with on $ACCELERATOR_TYPE, when that is its published slice
# (official_halonet/tpu/slices.py); the user's, later, win. None that are already there.
add_published_bindings() {
  local f b out published=()
  for f in "${GIN_FILES[@]}"; do
    out="$(python3 "$TPU_SCRIPTS_DIR/../official_halonet/tpu/slices.py" --bindings "$f" "$ACCELERATOR_TYPE" 2>/dev/null)" || continue
    while IFS= read -r b; do
      [[ -n "$b" && " ${GIN_BINDINGS[*]} " != *" $b "* ]] && published+=("$b")
    done <<<"$out"
    ((${#published[@]})) && note "--gin_bindings ${published[*]}: what ${f} is published with on $ACCELERATOR_TYPE"
    GIN_BINDINGS=("${published[@]}" "${GIN_BINDINGS[@]}")
    return 0
  done
}

validate_main_flags() {
  ((${#GIN_FILES[@]} > 0)) || die "--gin_file is required (e.g. --gin_file=gin/h0.gin)"
  local f
  for f in "${GIN_FILES[@]}"; do
    [[ "$f" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*\.gin$ && "$f" != *..* ]] ||
      die "--gin_file '$f' must be a .gin file given relative to the project root, e.g. gin/h0.gin"
    if [[ ! -f "$TPU_SCRIPTS_DIR/../$f" ]]; then
      printf '%s: warning: %s is not in this checkout; it must exist in the copy on the TPU VM\n' \
        "$SCRIPT_NAME" "$f" >&2
    fi
  done
  [[ -n "$MODEL_DIR" ]] || die "--model_dir is required (a gs:// path, e.g. gs://my-bucket/halonet/h0)"
  [[ "$MODEL_DIR" =~ ^gs://[a-z0-9][-a-z0-9_.]*[a-z0-9](/.*)?$ ]] ||
    die "--model_dir '$MODEL_DIR' must be gs://BUCKET/PATH with a valid bucket name: every TPU host reads and writes it"
  add_published_bindings
}

# main_argv MODE [TPU]: sets MAIN_ARGV to the command a host runs (from REMOTE_DIR/src).
MAIN_ARGV=()
main_argv() {
  local mode="$1" tpu="${2:-}" f b
  MAIN_ARGV=()
  if ((${#REMOTE_ENV[@]} > 0)); then
    MAIN_ARGV+=(env "${REMOTE_ENV[@]}")
  fi
  MAIN_ARGV+=(../venv/bin/python3 main.py)
  for f in "${GIN_FILES[@]}"; do
    MAIN_ARGV+=("--gin_file=$f")
  done
  for b in "${GIN_BINDINGS[@]}"; do
    MAIN_ARGV+=("--gin_bindings=$b")
  done
  MAIN_ARGV+=("--mode=$mode" "--model_dir=$MODEL_DIR")
  if [[ -n "$tpu" ]]; then
    MAIN_ARGV+=("--tpu=$tpu")
  fi
  MAIN_ARGV+=("${EXTRA_MAIN_FLAGS[@]}")
}

# host_job_command ACTION JOB [ARGS...]: the remote shell command that runs host_job.sh on a host.
host_job_command() {
  printf 'cd %s/src && bash tpu_scripts/host_job.sh %s' "$(shell_quote "$REMOTE_DIR")" "$(shell_quote "$@")"
}

# launch_job JOB MODE TPU WAIT [WORKER]: start main.py as a detached job on the hosts (all hosts of a
# pod, or WORKER), then, when WAIT is 1, stream worker 0's log until the job ends and check that it
# succeeded on every host.
launch_job() {
  local job="$1" mode="$2" tpu="$3" wait="$4" worker="${5:-}"
  local target=()
  if [[ -n "$worker" ]]; then
    target=("--worker=$worker")
  fi
  main_argv "$mode" "$tpu"
  remote_ssh "${target[@]}" "$(host_job_command start "$job" -- "${MAIN_ARGV[@]}")"
  ((wait)) || return 0
  if [[ -z "$worker" ]] && is_pod; then
    remote_ssh --worker=0 "$(host_job_command wait "$job")"
    remote_ssh --worker=all "$(host_job_command wait "$job" --quiet)"
  else
    remote_ssh "${target[@]}" "$(host_job_command wait "$job")"
  fi
}
