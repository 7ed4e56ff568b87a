#!/usr/bin/env bash
# Copies the project to every host of a TPU VM / pod and installs it there (host_setup.sh).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF2'
Usage: setup.sh --name NAME --zone ZONE --accelerator-type TYPE [flags]

Packs the project at a git revision (git archive: committed files only), copies it to every host
(gcloud ... scp, --worker=all on pods), unpacks it to ~/REMOTE_DIR/src (replacing the previous
copy; the venv, logs and jobs stay), and runs tpu_scripts/host_setup.sh there: Python 3.11, a venv
with requirements.txt pinned by constraints.txt (libtpu and JAX included), and the TPU build of
TensorFlow.
Do not run it while a job is running on the TPU: it replaces the code under that job.

Flags:
  --ref REV                 git revision to ship (default: HEAD; uncommitted changes are not shipped)
  --python PYTHON           interpreter for the venv on the hosts (default: python3.11)
EOF2
  common_flags_help
}

REF="HEAD"
HOST_SETUP_ARGS=()
while (($#)); do
  if parse_common_flag "$@"; then
    shift "$FLAG_SHIFT"
    continue
  fi
  case "$1" in
    --ref | --ref=*)
      take_value --ref "$@"
      REF="$FLAG_VALUE"
      shift "$FLAG_SHIFT"
      ;;
    --python | --python=*)
      take_value --python "$@"
      HOST_SETUP_ARGS+=(--python "$FLAG_VALUE")
      shift "$FLAG_SHIFT"
      ;;
    *)
      die "unknown flag: $1"
      ;;
  esac
done

validate_target
ROOT="$(cd "$TPU_SCRIPTS_DIR/.." && pwd)"
git -C "$ROOT" rev-parse --verify --quiet "$REF^{commit}" >/dev/null ||
  die "--ref '$REF' is not a commit of $ROOT"
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]]; then
  note "warning: uncommitted changes in $ROOT are not shipped (setup.sh ships $REF)"
fi

TARBALL="${TMPDIR:-/tmp}/halonet-src-$TPU_NAME.tar.gz"
REMOTE_TARBALL="${REMOTE_DIR//\//-}-src.tar.gz"  # in the home folder, which exists
set_worker_args

note "shipping $REF to $ACCELERATOR_TYPE '$TPU_NAME' ($(accelerator_hosts "$ACCELERATOR_TYPE") host(s)) and installing"
run git -C "$ROOT" archive --format=tar.gz "--output=$TARBALL" "$REF"
scp_args=(gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:$REMOTE_TARBALL" "--zone=$ZONE")
if [[ -n "$PROJECT" ]]; then
  scp_args+=("--project=$PROJECT")
fi
run "${scp_args[@]}" "${WORKER_ARGS[@]}"
remote_ssh "$(shell_quote mkdir -p "$REMOTE_DIR") && $(shell_quote rm -rf "$REMOTE_DIR/src") && \
$(shell_quote mkdir "$REMOTE_DIR/src") && $(shell_quote tar -xzf "$REMOTE_TARBALL" -C "$REMOTE_DIR/src") && \
$(shell_quote rm "$REMOTE_TARBALL") && \
$(shell_quote bash "$REMOTE_DIR/src/tpu_scripts/host_setup.sh" "${HOST_SETUP_ARGS[@]}")"
