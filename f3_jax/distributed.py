"""Starting a multi-process job: joining the distributed runtime, and the workdir checks
every process takes part in (it is writable and shared; one trainer holds it).

Each check ends the same way on every process (a collective decides), so that none waits in
a later collective while the others stop.
"""

from __future__ import annotations

import os
import socket
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from f3_jax import storage
from f3_jax.errors import UserError
from f3_jax.workdir_lock import WorkdirLock, WorkdirLockedError


class DistributedError(UserError):
    """This process could not join the distributed run; the message names the coordinator."""


def maybe_initialize(
    mode: str,
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    local_device_ids: list[str] | None,
    timeout_s: int,
    heartbeat_timeout_s: int,
) -> None:
    """jax.distributed.initialize when flags or the environment (TPU pod, SLURM) say so.

    mode: "auto" (when the flags, SLURM or TPU_WORKER_HOSTNAMES say so), "yes" (always: JAX
    detects Cloud TPU VMs, GKE, SLURM, MPI) or "no". A coordinator that does not answer within
    `timeout_s` raises DistributedError naming it, instead of a hang or a bare RPC error.
    """
    explicit = bool(coordinator) or (num_processes or 1) > 1
    if mode == "no" or not (explicit or _cluster_detected() or mode == "yes"):
        return
    ids = [int(i) for i in local_device_ids] if local_device_ids else None
    kwargs = dict(
        local_device_ids=ids,
        initialization_timeout=timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
    )
    if explicit:  # else JAX detects the cluster: Cloud TPU VM, GKE, SLURM, MPI
        kwargs |= dict(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
        )
    where = coordinator or "the coordinator JAX detected"
    problem = None
    if coordinator and process_id:
        # JAX's client aborts the process (a C++ fatal error, no exception) when the
        # coordinator never answers; find out first, and say so in words.
        problem = wait_for_coordinator(coordinator, timeout_s)
    if problem is None:
        try:
            jax.distributed.initialize(**kwargs)
        except Exception as e:  # any failure to join is reported the same way
            problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        raise DistributedError(
            f"could not join the distributed run at {where} as process "
            f"{process_id} of {num_processes} within "
            f"--distributed_timeout={timeout_s} s ({problem}). "
            "Is process 0 running, and is its address reachable from here?"
        )
    logging.info(
        "process %d of %d, %d local devices of %d",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _cluster_detected() -> bool:
    """SLURM with several tasks, or a TPU pod slice of several workers."""
    return (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    )


def wait_for_coordinator(address: str, timeout_s: float) -> str | None:
    """None once a TCP connection to host:port succeeds, else the last error at the deadline."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                return None
        except OSError as e:
            if time.monotonic() >= deadline:
                return f"{type(e).__name__}: {e}"
        time.sleep(1.0)


def check_workdir(workdir: str) -> None:
    """The workdir is writable, and with several processes the same storage for all of them.

    Raises storage.WorkdirError on every process together (an all-gather decides), so none
    hangs in a later collective while the others stop.
    """
    if jax.process_count() == 1:
        storage.check_workdir_writable(workdir)
        return
    token = multihost_utils.broadcast_one_to_all(np.random.default_rng().integers(1 << 62))
    storage.check_workdir_shared(
        workdir,
        process_index=jax.process_index(),
        token=f"{int(token):x}",
        barrier=lambda: multihost_utils.sync_global_devices("workdir token written"),
        gather=lambda ok: multihost_utils.process_allgather(np.array(ok)),
    )


def take_workdir_lock(workdir: str) -> WorkdirLock | None:
    """Process 0 takes WORKDIR/train.lock; every process stops together if it cannot."""
    lock, problem = None, ""
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir)
        try:
            warning = lock.acquire()
            if warning:
                logging.warning("%s", warning)
        except WorkdirLockedError as e:
            lock, problem = None, str(e)
    if jax.process_count() > 1:
        held = multihost_utils.broadcast_one_to_all(np.int32(lock is not None))
        if not held and jax.process_index() != 0:
            problem = "process 0 could not take the workdir lock (its log says who holds it)"
    if problem:
        raise WorkdirLockedError(problem)
    return lock
