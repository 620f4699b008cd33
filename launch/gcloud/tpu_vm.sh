#!/usr/bin/env bash
# Train lingjax on a Cloud TPU VM (single- or multi-host): create it, install lingjax on every
# worker, run the same training command on all workers at once (lingjax.parallel.initialize()
# detects the TPU VM and jax.distributed joins the hosts), collect the workers' logs, delete it.
#
#   launch/gcloud/tpu_vm.sh [--dry-run] [options] STEP [-- TRAIN_ARGS...]
#   STEP: create | install | run | logs | delete | all (the five in order; delete runs even
#         if training fails, so a failed run does not keep billing)
#
#   launch/gcloud/tpu_vm.sh --name=mini --zone=us-east5-a --accelerator=v5p-32 all -- \
#       --config=ling-mini-2.0 --config.mesh.expert=8 --workdir=gs://my-bucket/runs/mini
#
# Options: --name (default lingjax-$USER), --zone, --accelerator (default v5p-8), --version
# (TPU software version, default v2-alpha-tpuv5), --project, --spot, --workers N (hosts, for
# `logs`; default: asked from gcloud), --logs DIR (default logs/NAME).
# The workdir should be a gs:// path (or another file system all hosts share): checkpoints are
# written by all hosts together. --dry-run prints every command instead of running it.
set -euo pipefail

dry_run=0
name="lingjax-${USER:-user}"
zone=""
accelerator="v5p-8"
version="v2-alpha-tpuv5"
project=""
spot=0
workers=""
logs=""
step=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --spot) spot=1 ;;
    --workers=*) workers=${1#*=} ;;
    --logs=*) logs=${1#*=} ;;
    create | install | run | logs | delete | all) step=$1 ;;
    --)
      shift
      break
      ;;
    *)
      echo "error: unknown argument '$1' (options go before STEP, training flags after --)" >&2
      exit 2
      ;;
  esac
  shift
done
train_args=("$@")
if [ -z "$step" ] || [ -z "$zone" ]; then
  echo "usage: $0 [--dry-run] --zone=ZONE [--name=N --accelerator=T ...] create|install|run|logs|delete|all [-- TRAIN_ARGS...]" >&2
  exit 2
fi
if { [ "$step" = run ] || [ "$step" = all ]; } && [ "${#train_args[@]}" -eq 0 ]; then
  echo "error: '$step' needs the training flags after --, e.g. -- --config=tiny --workdir=gs://b/run" >&2
  exit 2
fi
logs=${logs:-logs/$name}
repo=$(cd "$(dirname "$0")/../.." && pwd)
remote_dir=lingjax          # in each worker's home directory
remote_log=lingjax-train.log
tarball=/tmp/lingjax-$name.tgz

show() { # print a command as a shell would read it back (single quotes where needed)
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

run() {
  if [ "$dry_run" = 1 ]; then
    show "$@"
  else
    "$@"
  fi
}

tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[ -n "$project" ] && where+=(--project="$project")

do_create() {
  local extra=()
  [ "$spot" = 1 ] && extra+=(--spot)
  run "${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" \
    --version="$version" "${extra[@]}"
}

do_install() {
  # The working tree as it is (uncommitted changes included), without local environments.
  run tar -czf "$tarball" -C "$repo" --exclude=.venv --exclude=.git --exclude=runs \
    --exclude=logs --exclude=__pycache__ .
  run "${tpu[@]}" scp "$tarball" "$name:lingjax.tgz" "${where[@]}" --worker=all
  # launch/setup.sh installs the pinned set (launch/constraints.txt); jax[tpu] adds the
  # matching libtpu under the same constraints.
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="mkdir -p $remote_dir && tar -xzf lingjax.tgz -C $remote_dir && cd $remote_dir && bash launch/setup.sh && .venv/bin/pip install -q -c launch/constraints.txt 'jax[tpu]'"
}

do_run() {
  local args
  args=$(printf '%q ' "${train_args[@]}")
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="cd $remote_dir && set -o pipefail && .venv/bin/python -m lingjax.cli.train ${args% } 2>&1 | tee $remote_log"
}

do_logs() {
  local n=$workers w
  if [ -z "$n" ]; then
    if [ "$dry_run" = 1 ]; then
      n=1 # a dry run asks nothing; pass --workers=N to see every worker's copy
      show "${tpu[@]}" describe "$name" "${where[@]}" --format="value(networkEndpoints.len())"
    else
      n=$("${tpu[@]}" describe "$name" "${where[@]}" --format="value(networkEndpoints.len())")
    fi
  fi
  run mkdir -p "$logs"
  for ((w = 0; w < n; w++)); do
    run "${tpu[@]}" scp "$name:$remote_log" "$logs/worker-$w.log" "${where[@]}" --worker="$w"
  done
}

do_delete() {
  run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
}

case "$step" in
  create) do_create ;;
  install) do_install ;;
  run) do_run ;;
  logs) do_logs ;;
  delete) do_delete ;;
  all)
    do_create
    status=0
    { do_install && do_run; } || status=$?
    do_logs || true
    do_delete
    exit "$status"
    ;;
esac
