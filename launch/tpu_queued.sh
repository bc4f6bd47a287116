#!/usr/bin/env bash
# Train f3_jax on a TPU pod slice obtained through a queued resource: request the slice
# (gcloud compute tpus queued-resources create ... --node-id), wait until the request is
# ACTIVE, then install and train exactly as launch/tpu_pod.sh does (which this script runs).
#
#   WORKDIR=gs://BUCKET/runs/ae_24k launch/tpu_queued.sh [TRAIN FLAGS...]
#   WORKDIR=gs://BUCKET/runs/ae_24k ACCELERATOR_TYPE=v5litepod-32 ZONE=us-west4-a \
#       RUNTIME_VERSION=v2-alpha-tpuv5-lite SPOT=1 launch/tpu_queued.sh --config.mesh.fsdp=32
#
# Variables (environment), with defaults (all of launch/tpu_pod.sh's variables apply too,
# except CREATE: the node is created by the queued resource):
#   TPU_NAME=f3-jax               node id of the slice (--node-id)
#   QUEUED_RESOURCE=$TPU_NAME-qr  name of the queued resource
#   ZONE=us-central2-b            zone
#   PROJECT=                      project (empty: gcloud's configured project)
#   ACCELERATOR_TYPE=v4-32        slice type
#   RUNTIME_VERSION=tpu-ubuntu2204-base  TPU VM image
#   SPOT=0                        1: a Spot request (--spot)
#   RESERVED=0                    1: use the project's reservation (--reserved)
#   VALID_UNTIL_DURATION=         give up if not provisioned within this duration (e.g. 6h);
#                                 empty: wait as long as it takes
#   POLL_SECONDS=60               how often the request's state is checked
#   WAIT_TIMEOUT=0                seconds to wait for ACTIVE before giving up (0: no limit)
#   DRY_RUN=0                     1: print the gcloud commands instead of running them
set -euo pipefail

TPU_NAME=${TPU_NAME:-f3-jax}
QUEUED_RESOURCE=${QUEUED_RESOURCE:-$TPU_NAME-qr}
ZONE=${ZONE:-us-central2-b}
PROJECT=${PROJECT:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
SPOT=${SPOT:-0}
RESERVED=${RESERVED:-0}
VALID_UNTIL_DURATION=${VALID_UNTIL_DURATION:-}
POLL_SECONDS=${POLL_SECONDS:-60}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-0}
DRY_RUN=${DRY_RUN:-0}

die() {
  echo "tpu_queued.sh: $*" >&2
  exit 1
}

[[ -n ${WORKDIR:-} ]] || die "set WORKDIR (gs://BUCKET/runs/NAME), shared by all workers"

gcloud_flags=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then
  gcloud_flags+=(--project="$PROJECT")
fi

qr_state() {
  gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${gcloud_flags[@]}" \
    --format='value(state.state)'
}

if [[ $DRY_RUN != 1 ]] && state=$(qr_state 2>/dev/null); then
  echo "queued resource $QUEUED_RESOURCE exists (state $state)"
else
  create=(gcloud compute tpus queued-resources create "$QUEUED_RESOURCE" "${gcloud_flags[@]}"
    --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE"
    --runtime-version="$RUNTIME_VERSION")
  if [[ $SPOT == 1 ]]; then
    create+=(--spot)
  fi
  if [[ $RESERVED == 1 ]]; then
    create+=(--reserved)
  fi
  if [[ -n $VALID_UNTIL_DURATION ]]; then
    create+=(--valid-until-duration="$VALID_UNTIL_DURATION")
  fi
  echo "requesting $ACCELERATOR_TYPE as queued resource $QUEUED_RESOURCE (node $TPU_NAME)"
  if [[ $DRY_RUN == 1 ]]; then
    printf '+'
    printf ' %q' "${create[@]}"
    printf '\n'
  else
    "${create[@]}"
  fi
fi

if [[ $DRY_RUN != 1 ]]; then
  start=$SECONDS
  while true; do
    state=$(qr_state)
    case $state in
      ACTIVE) break ;;
      FAILED | SUSPENDED | DELETING)
        die "queued resource $QUEUED_RESOURCE is $state (gcloud compute tpus" \
          "queued-resources describe $QUEUED_RESOURCE ${gcloud_flags[*]})" ;;
    esac
    if ((WAIT_TIMEOUT > 0 && SECONDS - start >= WAIT_TIMEOUT)); then
      die "queued resource $QUEUED_RESOURCE still $state after ${WAIT_TIMEOUT}s"
    fi
    echo "$(date +%H:%M:%S) queued resource $QUEUED_RESOURCE: $state; waiting"
    sleep "$POLL_SECONDS"
  done
  echo "queued resource $QUEUED_RESOURCE is ACTIVE"
fi

# The node exists now: tpu_pod.sh reuses it (CREATE=0 makes sure it never creates one).
export TPU_NAME ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION DRY_RUN
CREATE=0 exec "$(dirname "${BASH_SOURCE[0]}")/tpu_pod.sh" "$@"
