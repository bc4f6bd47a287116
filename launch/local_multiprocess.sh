#!/usr/bin/env bash
# Multi-process training on this machine (CPU): N processes joined by jax.distributed.
#
#   launch/local_multiprocess.sh N ARGS...
#   launch/local_multiprocess.sh 2 --config configs/ae_demo.py --workdir runs/mp2 \
#       --config.mesh.data=2
#
# Starts N processes of
#   $PYTHON -m $TRAIN_MODULE ARGS... --coordinator_address=127.0.0.1:$PORT \
#       --num_processes=N --process_id=i
# each in its own process group, with its output in $LOG_DIR/process_<i>.log, and waits for
# them. Prints every process's exit code; exits 0 only if all of them exit 0. When a process
# fails, or this script gets INT or TERM, the others get SIGTERM and, KILL_AFTER seconds later,
# SIGKILL (after jax.distributed.initialize a process treats SIGTERM as a preemption notice and
# may not exit on it), so no process (or process of theirs) is left behind; only a SIGKILL of
# this script itself leaves them running.
#
# Variables (environment), with defaults:
#   PYTHON=python3           interpreter
#   TRAIN_MODULE=f3_jax.train module run with `python -m`
#   PORT=<free port>         coordinator port on 127.0.0.1 (default: one the OS reports free)
#   LOG_DIR=<mktemp -d>      per-process logs; the directory is printed
#   KILL_AFTER=60            seconds between SIGTERM and SIGKILL
#   POLL_SECONDS=0.5         how often the processes are checked
#   JAX_PLATFORMS=cpu        exported to the processes
#   JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:$PORT  exported: the coordinator (process 0)
#                            listens on the loopback interface only
#   XLA_FLAGS                passed through unchanged: one CPU device per process unless it
#                            says otherwise (--xla_force_host_platform_device_count=K)
set -euo pipefail

usage() {
  echo "usage: $0 N [ARGS...]: N processes of python -m \$TRAIN_MODULE (f3_jax.train) ARGS..." >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
NUM_PROCESSES=$1
shift
[[ $NUM_PROCESSES =~ ^[1-9][0-9]*$ ]] || usage

PYTHON=${PYTHON:-python3}
TRAIN_MODULE=${TRAIN_MODULE:-f3_jax.train}
KILL_AFTER=${KILL_AFTER:-60}
POLL_SECONDS=${POLL_SECONDS:-0.5}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}

if [[ -z ${PORT:-} ]]; then
  PORT=$("$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
fi
if [[ -z ${LOG_DIR:-} ]]; then
  LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/f3_jax_local_mp.XXXXXX")
fi
mkdir -p "$LOG_DIR"
export JAX_COORDINATOR_BIND_ADDRESS=${JAX_COORDINATOR_BIND_ADDRESS:-127.0.0.1:$PORT}

pids=()      # pid of process i (also its process group id)
codes=()     # exit code of process i; empty while it runs
failed=""    # first failing process index
stopping=0   # 1 once SIGTERM went out
term_sent_at=0
interrupted=""

alive() {
  local i
  for i in "${!pids[@]}"; do
    [[ -z ${codes[i]} ]] && return 0
  done
  return 1
}

signal_running() {  # signal_running SIGNAL: to the process groups of processes still running
  local i
  for i in "${!pids[@]}"; do
    if [[ -z ${codes[i]} ]]; then
      kill "-$1" -- "-${pids[i]}" 2>/dev/null || true
    fi
  done
}

start_stopping() {
  if [[ $stopping == 0 ]]; then
    stopping=1
    term_sent_at=$SECONDS
    echo "sending SIGTERM to the running processes; SIGKILL in ${KILL_AFTER}s" >&2
    signal_running TERM
  fi
}

# shellcheck disable=SC2329  # called from the INT and TERM traps
on_signal() {  # a first INT/TERM: SIGTERM to all; a second one: SIGKILL now
  echo "got SIG$1" >&2
  if [[ -n $interrupted ]]; then
    signal_running KILL
  fi
  interrupted=$1
  start_stopping
}

cleanup() {  # on any exit: nothing may survive this script, not even its process groups
  local i
  for i in "${!pids[@]}"; do
    kill -KILL -- "-${pids[i]}" 2>/dev/null || true
  done
}

trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap cleanup EXIT

echo "coordinator 127.0.0.1:$PORT, $NUM_PROCESSES processes of $PYTHON -m $TRAIN_MODULE"
echo "logs: $LOG_DIR/process_<i>.log"
# Job control while starting them: each background job gets its own process group (pgid = its
# pid), so that a signal to the group also reaches what the process started (data-loader
# workers and the like). Off again afterwards, so that the terminal's Ctrl-C still reaches
# this script rather than a foreground `sleep`.
set -m
for ((i = 0; i < NUM_PROCESSES; i++)); do
  "$PYTHON" -m "$TRAIN_MODULE" "$@" \
    --coordinator_address="127.0.0.1:$PORT" \
    --num_processes="$NUM_PROCESSES" \
    --process_id="$i" \
    >"$LOG_DIR/process_$i.log" 2>&1 </dev/null &
  pids[i]=$!
  codes[i]=""
  echo "process $i: pid ${pids[i]}"
done
set +m

while alive; do
  for i in "${!pids[@]}"; do
    [[ -n ${codes[i]} ]] && continue
    # bash reaps its children as they end: a pid that no longer exists has finished, and
    # `wait` returns the exit code bash kept for it.
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      rc=0
      wait "${pids[i]}" 2>/dev/null || rc=$?
      codes[i]=$rc
      echo "process $i (pid ${pids[i]}) exited with code $rc"
      if [[ $rc != 0 && -z $failed ]]; then
        failed=$i
        if [[ $stopping == 0 ]]; then
          echo "process $i failed: stopping the others (log: $LOG_DIR/process_$i.log)" >&2
          start_stopping
        fi
      fi
    fi
  done
  if [[ $stopping == 1 ]] && ((SECONDS - term_sent_at >= KILL_AFTER)) && alive; then
    echo "sending SIGKILL to the processes still running" >&2
    signal_running KILL
    term_sent_at=$((SECONDS + 1000000))  # once
  fi
  alive && sleep "$POLL_SECONDS"
done
# Whatever the processes started in their groups goes too, even after a clean exit.
cleanup

echo "exit codes:"
status=0
for i in "${!pids[@]}"; do
  echo "  process $i: ${codes[i]}"
  if [[ ${codes[i]} != 0 && $status == 0 ]]; then
    status=${codes[i]}
  fi
done
if [[ -n $failed ]]; then
  status=${codes[failed]}
fi
if [[ -n $interrupted ]]; then
  [[ $interrupted == INT ]] && status=130 || status=143
fi
exit "$status"
