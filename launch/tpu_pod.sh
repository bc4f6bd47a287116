#!/usr/bin/env bash
# Train f3_jax on a Cloud TPU VM pod slice: create the slice (or reuse it), install f3_jax on
# every worker, run `python -m f3_jax.train` on all workers at once.
#
#   WORKDIR=gs://BUCKET/runs/ae_24k launch/tpu_pod.sh [TRAIN FLAGS...]
#   WORKDIR=gs://BUCKET/runs/ae_24k ACCELERATOR_TYPE=v5p-32 ZONE=us-east5-a \
#       RUNTIME_VERSION=v2-alpha-tpuv5 DATA_SRC=gs://BUCKET/corpus_24k \
#       launch/tpu_pod.sh --config.mesh.fsdp=16
#
# Extra arguments are appended to the train command (e.g. --config.train.batch_size=256).
# Every worker runs the same command; f3_jax.train joins them with jax.distributed (see
# SET_TPU_WORKER_ENV). Needs gcloud, authenticated, with the TPU API enabled in the project.
#
# Variables (environment), with defaults:
#   TPU_NAME=f3-jax               name of the TPU VM (pod slice)
#   ZONE=us-central2-b            zone of the slice
#   PROJECT=                      project (empty: gcloud's configured project)
#   ACCELERATOR_TYPE=v4-32        slice type; v4-32 is 4 workers of 4 chips
#   RUNTIME_VERSION=tpu-ubuntu2204-base  TPU VM image (v5p: v2-alpha-tpuv5, v5e:
#                                 v2-alpha-tpuv5-lite, v6e: v2-alpha-tpuv6e)
#   SPOT=0                        1: create a Spot slice (preemptible)
#   CREATE=1                      0: never create; fail if TPU_NAME does not exist
#   INSTALL=1                     0: skip copying and installing f3_jax (already done)
#   REPO_URL=                     git URL cloned on every worker; empty: copy this checkout
#                                 (its committed files plus uncommitted changes to them)
#   GIT_REF=main                  branch, tag or commit checked out after cloning REPO_URL
#   REMOTE_DIR=f3_jax             directory of the code on the workers (under the home dir)
#   PIP_EXTRAS=                   extras of f3_jax to install, e.g. "eval" ("" for none)
#   JAX_PIP_SPEC=jax[tpu]         the jax requirement installed with f3_jax (pin it for
#                                 reproducible runs, e.g. "jax[tpu]==0.10.2")
#   CONFIG=configs/ae_24k.py      config file, relative to REMOTE_DIR
#   WORKDIR=                      required: checkpoints and logs, shared by all workers
#                                 (gs://BUCKET/...); f3_jax.train is started with it
#   DATA_SRC=                     gs:// directory of a prepared corpus, copied to DATA_DIR on
#                                 every worker (gcloud storage rsync) and passed as
#                                 --config.data.path; empty: the config's data.path is used
#   DATA_DIR=f3_data              where DATA_SRC goes on each worker (under the home dir)
#   SET_TPU_WORKER_ENV=1          export TPU_WORKER_ID and TPU_WORKER_HOSTNAMES (read from the
#                                 VM's metadata) so that f3_jax.train calls
#                                 jax.distributed.initialize(); 0: leave the environment alone
#   DETACH=0                      1: start training in the background (nohup) and return;
#                                 output in ~/LOG_FILE on each worker
#   LOG_FILE=f3_jax_train.log     log file on each worker when DETACH=1
#   DRY_RUN=0                     1: print the gcloud commands instead of running them
set -euo pipefail

TPU_NAME=${TPU_NAME:-f3-jax}
ZONE=${ZONE:-us-central2-b}
PROJECT=${PROJECT:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
SPOT=${SPOT:-0}
CREATE=${CREATE:-1}
INSTALL=${INSTALL:-1}
REPO_URL=${REPO_URL:-}
GIT_REF=${GIT_REF:-main}
REMOTE_DIR=${REMOTE_DIR:-f3_jax}
PIP_EXTRAS=${PIP_EXTRAS:-}
JAX_PIP_SPEC=${JAX_PIP_SPEC:-jax[tpu]}
CONFIG=${CONFIG:-configs/ae_24k.py}
WORKDIR=${WORKDIR:-}
DATA_SRC=${DATA_SRC:-}
DATA_DIR=${DATA_DIR:-f3_data}
SET_TPU_WORKER_ENV=${SET_TPU_WORKER_ENV:-1}
DETACH=${DETACH:-0}
LOG_FILE=${LOG_FILE:-f3_jax_train.log}
DRY_RUN=${DRY_RUN:-0}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 1
}

[[ -n $WORKDIR ]] || die "set WORKDIR (gs://BUCKET/runs/NAME), shared by all workers"
[[ $WORKDIR == gs://* ]] ||
  echo "tpu_pod.sh: warning: WORKDIR=$WORKDIR is not gs://: each worker writes its own disk" >&2
[[ -n $REMOTE_DIR && $REMOTE_DIR != / ]] || die "REMOTE_DIR must name a directory"

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

gcloud_flags=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then
  gcloud_flags+=(--project="$PROJECT")
fi

run() {  # run CMD...: runs it, or prints it when DRY_RUN=1
  if [[ $DRY_RUN == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

on_all_workers() {  # on_all_workers 'remote bash command'
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=all \
    --command="$1"
}

# ---- 1. the slice ---------------------------------------------------------------------------
state=""
if [[ $DRY_RUN != 1 ]]; then
  state=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_flags[@]}" \
    --format='value(state)' 2>/dev/null) || state=""
elif [[ $CREATE != 1 ]]; then
  state=READY  # dry run: assume that the node exists
fi
if [[ -n $state ]]; then
  echo "reusing TPU VM $TPU_NAME (state $state)"
  [[ $state == READY ]] || die "$TPU_NAME is $state, not READY"
elif [[ $CREATE == 1 ]]; then
  echo "creating TPU VM $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $ZONE"
  create=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_flags[@]}"
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ $SPOT == 1 ]]; then
    create+=(--spot)
  fi
  run "${create[@]}"
else
  die "TPU VM $TPU_NAME does not exist in $ZONE (CREATE=0)"
fi

# ---- 2. code and packages on every worker ---------------------------------------------------
q_dir=$(printf '%q' "$REMOTE_DIR")
if [[ $INSTALL == 1 ]]; then
  if [[ -n $REPO_URL ]]; then
    fetch="rm -rf $q_dir && git clone --quiet $(printf '%q' "$REPO_URL") $q_dir"
    fetch+=" && git -C $q_dir checkout --quiet $(printf '%q' "$GIT_REF")"
  else
    # The committed tree plus uncommitted changes to tracked files (git stash create makes a
    # commit object without touching the working tree or the stash list).
    tarball=$(mktemp "${TMPDIR:-/tmp}/f3_jax_src.XXXXXX")
    trap 'rm -f "$tarball"' EXIT
    tree=$(git -C "$REPO_ROOT" stash create)
    git -C "$REPO_ROOT" archive --format=tar.gz -o "$tarball" "${tree:-HEAD}"
    echo "copying $REPO_ROOT (${tree:-HEAD}) to every worker"
    run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:f3_jax_src.tar.gz" \
      "${gcloud_flags[@]}" --worker=all
    fetch="rm -rf $q_dir && mkdir -p $q_dir && tar -xzf f3_jax_src.tar.gz -C $q_dir"
  fi
  package=$REMOTE_DIR
  if [[ -n $PIP_EXTRAS ]]; then
    package="${REMOTE_DIR}[${PIP_EXTRAS}]"
  fi
  install="set -euo pipefail; cd ~; $fetch"
  install+="; python3 -m pip install --quiet --upgrade pip"
  install+="; python3 -m pip install --quiet -e ./$(printf '%q' "$package")"
  install+=" $(printf '%q' "$JAX_PIP_SPEC")"
  if [[ -n $DATA_SRC ]]; then
    q_data=$(printf '%q' "$DATA_DIR")
    install+="; mkdir -p $q_data"
    install+="; gcloud storage rsync --recursive $(printf '%q' "$DATA_SRC") $q_data"
  fi
  echo "installing f3_jax on every worker"
  on_all_workers "$install"
fi

# ---- 3. training on every worker ------------------------------------------------------------
train="python3 -m f3_jax.train --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")"
if [[ -n $DATA_SRC ]]; then
  train+=" --config.data.path=\"\$HOME\"/$(printf '%q' "$DATA_DIR")"  # $HOME of the worker
fi
for arg in "$@"; do
  train+=" $(printf '%q' "$arg")"
done

remote="set -euo pipefail; cd ~/$q_dir"
if [[ $SET_TPU_WORKER_ENV == 1 ]]; then
  # The coordinates GKE sets for JobSets; f3_jax.train calls jax.distributed.initialize()
  # when TPU_WORKER_HOSTNAMES names more than one worker, and JAX reads both variables.
  md='curl -sf -H Metadata-Flavor:Google'
  md+=' http://metadata.google.internal/computeMetadata/v1/instance/attributes'
  remote+="; export TPU_WORKER_ID=\$($md/agent-worker-number)"
  remote+="; export TPU_WORKER_HOSTNAMES=\$($md/worker-network-endpoints"
  remote+=" | tr , '\\n' | awk -F: '{print \$NF}' | paste -sd, -)"
fi
if [[ $DETACH == 1 ]]; then
  q_log=$(printf '%q' "$LOG_FILE")
  remote+="; nohup setsid $train > ~/$q_log 2>&1 < /dev/null &"
  echo "starting training in the background on every worker; follow it with:"
  echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME ${gcloud_flags[*]} --worker=0" \
    "--command='tail -f ~/$LOG_FILE'"
else
  remote+="; $train"
fi
echo "training on every worker: $train"
on_all_workers "$remote"
