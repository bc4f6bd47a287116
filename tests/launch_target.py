"""A tiny stand-in for `f3_jax.train` that `tests/test_launch.py` runs under the launch scripts.

    TRAIN_MODULE=tests.launch_target launch/local_multiprocess.sh 2 [--fail_process=1 ...]

Takes the flags the launcher appends (--coordinator_address, --num_processes, --process_id),
joins the jax.distributed run over the loopback address, all-gathers each process's index across
processes and prints the result (`allgather=[0, 1]`), then exits 0. Before anything else it
writes its pid (and its helper child's, with --spawn_child) to $LAUNCH_TARGET_PID_DIR, so that
the test can check afterwards that none of them is still alive.

Failure knobs: --fail_process=K makes process K exit with --fail_code after the all-gather,
while the others block in a second all-gather that can never complete (as a real trainer would
hang in a collective); --ignore_term makes the processes ignore SIGTERM, so that only SIGKILL
ends them; --hang makes every process block after the all-gather.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def _write_pid(name: str, pid: int) -> None:
    pid_dir = os.environ.get("LAUNCH_TARGET_PID_DIR")
    if pid_dir:
        with open(os.path.join(pid_dir, f"{name}.pid"), "w") as f:
            f.write(f"{pid}\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator_address", required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--fail_process", type=int, default=-1)
    parser.add_argument("--fail_code", type=int, default=3)
    parser.add_argument("--ignore_term", action="store_true")
    parser.add_argument("--spawn_child", action="store_true")
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args(argv)

    _write_pid(f"process_{args.process_id}", os.getpid())
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.spawn_child:
        # A grandchild of the launcher: it must die with its parent's process group.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        _write_pid(f"child_{args.process_id}", child.pid)

    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    # The launcher exports JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:PORT (loopback only).
    print(f"bind={os.environ.get('JAX_COORDINATOR_BIND_ADDRESS')}", flush=True)
    jax.distributed.initialize(
        args.coordinator_address,
        args.num_processes,
        args.process_id,
        initialization_timeout=120,
    )
    gathered = multihost_utils.process_allgather(np.int32(jax.process_index()))
    print(f"allgather={np.asarray(gathered).tolist()}", flush=True)

    if args.process_id == args.fail_process:
        print(f"process {args.process_id} fails with exit code {args.fail_code}", flush=True)
        os._exit(args.fail_code)  # no shutdown handshake: as a crash would
    if args.fail_process >= 0 or args.hang:
        print("waiting in a collective that cannot complete", flush=True)
        multihost_utils.process_allgather(np.int32(0))
        time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
