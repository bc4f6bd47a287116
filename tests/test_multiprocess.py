"""Multi-process training over 127.0.0.1: `python -m f3_jax.train` as cooperating processes.

Each process has one CPU device; the reference is one process with two. Every process is bounded
by a timeout after which it is SIGKILLed and the test fails. All runs use tests/cli_runs.py's
config and share one persistent XLA compilation cache, so only the first run of each kind (one
process of two devices, two processes of one) compiles.

Runs, in order:
  reference  one process, two devices: N steps, checkpoints at N/2 and N (conftest's
             `cli_reference`, shared with test_train_cli.py).
  preempted  two processes through launch/local_multiprocess.sh, SIGTERM to process 1 as step 1
             starts: every process saves the same step and exits 0.
  relaunched the same command again: resumes from that step and runs to N, which must end
             where the reference ended (losses at every step, parameters at N).
  to_one     the relaunched run's checkpoint N/2 resumed by one process of two devices.
  to_two     the reference's checkpoint N/2 resumed by two processes.
Both elastic resumes must see the reference's batches and end with its parameters. Then: a
SIGKILLed process makes the other exit non-zero with JAX's message; an unreachable coordinator,
a mesh that does not fit the devices and a workdir the processes do not share stop the run with
errors naming them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from f3_jax import checkpoint, exports
from tests.cli_runs import RUN_TIMEOUT_S, N, Setup, batch_records, losses, tail

LAUNCHER = Path(__file__).resolve().parents[1] / "launch" / "local_multiprocess.sh"
HEARTBEAT_S = 10  # a process silent this long counts as dead


@dataclass
class Run:
    codes: list[int]
    logs: list[str]
    seconds: float


@pytest.fixture(scope="module")
def setup(cli_setup) -> Setup:
    return cli_setup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(setup: Setup, workdir: str, *extra: str) -> list[str]:
    return [
        "--config", str(setup.config), "--workdir", workdir, "--record_batch_ids",
        f"--heartbeat_timeout={HEARTBEAT_S}", *extra,
    ]  # fmt: skip


def _wait(proc: subprocess.Popen, started: float, timeout: float = RUN_TIMEOUT_S) -> int:
    try:
        return proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail(f"{proc.args} ran past {timeout} s")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _single(setup: Setup, workdir: str, name: str) -> Run:
    """One process with two devices."""
    t0 = time.monotonic()
    log = setup.tmp / f"{name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "f3_jax.train", *_train_args(setup, workdir)],
            cwd=setup.tmp, env=setup.env_two_devices, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    code = _wait(proc, t0)
    return Run([code], [log.read_text()], time.monotonic() - t0)


def _launch(setup: Setup, workdir: str, name: str, on_start=None) -> Run:
    """Two processes through launch/local_multiprocess.sh; on_start(pids) runs once they exist."""
    t0 = time.monotonic()
    logs = setup.tmp / f"{name}_logs"
    env = dict(setup.env, LOG_DIR=str(logs), KILL_AFTER="20", PYTHON=sys.executable)
    out = setup.tmp / f"{name}.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(
            ["bash", str(LAUNCHER), "2", *_train_args(setup, workdir)],
            cwd=setup.tmp, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        if on_start is not None:
            pids = _poll(proc, t0, lambda: _launcher_pids(out.read_text()), "two process pids")
            on_start(pids, proc, t0)
        code = _wait(proc, t0)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    text = out.read_text()
    codes = [int(c) for c in re.findall(r"process \d: (-?\d+)$", text, re.M)]
    assert len(codes) == 2 and code == (codes[0] or codes[1]), text
    return Run(codes, [(logs / f"process_{i}.log").read_text() for i in range(2)], 0.0)


def _launcher_pids(text: str) -> list[int] | None:
    pids = [int(p) for p in re.findall(r"^process \d: pid (\d+)$", text, re.M)]
    return pids if len(pids) == 2 else None


def _poll(proc: subprocess.Popen, started: float, get, what: str):
    while (value := get()) is None:
        if proc.poll() is not None or time.monotonic() - started > RUN_TIMEOUT_S:
            _kill_group(proc)
            pytest.fail(f"no {what}: the run ended or ran past {RUN_TIMEOUT_S} s")
        time.sleep(0.05)
    return value


def _restore(workdir: Path, step: int) -> dict:
    ckpt = checkpoint.Checkpointer(str(workdir))
    try:
        import jax

        return exports.flat_arrays(jax.device_get(ckpt.restore_raw(step)))
    finally:
        ckpt.close()


def _stopped_at(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"stopping at step (\d+) after saving a checkpoint", log)]


def _copy_at(src: Path, dst: Path, step: int) -> None:
    """A workdir as it was when checkpoint `step` was the newest."""
    shutil.copytree(src, dst)
    for p in (dst / "checkpoints").iterdir():
        if p.name.isdigit() and int(p.name) > step:
            shutil.rmtree(p)


def _assert_same_state(workdir: Path, reference: Path) -> None:
    want, got = _restore(reference, N), _restore(workdir, N)
    assert want.keys() == got.keys()
    for key, value in want.items():
        # Same programs over the same global batches; only the all-reduce runs across
        # processes instead of inside one, so the sums may round differently.
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def _assert_reference_batches(workdir: Path, reference: Path, steps, rows: int) -> None:
    """Process 0's rows of every step's batch were the reference's first `rows` ids."""
    want = {r["step"]: r["ids"] for r in batch_records(reference)}
    got = {r["step"]: r["ids"] for r in batch_records(workdir)}
    for step in steps:
        assert got[step] == want[step][:rows], (step, got[step], want[step])


@pytest.fixture(scope="module")
def reference(cli_reference) -> Path:
    workdir, run = cli_reference
    assert run.returncode == 0, tail(run.log)
    return workdir


@pytest.fixture(scope="module")
def preempted(setup, reference) -> tuple[Run, Run]:
    """Two processes: SIGTERM to process 1 as step 1 starts, then the relaunch to N."""
    workdir = setup.tmp / "two"

    def sigterm_when_training(pids, proc, t0):
        _poll(proc, t0, lambda: batch_records(workdir) or None, "the first batch")
        os.kill(pids[1], signal.SIGTERM)

    first = _launch(setup, "two", "preempted", sigterm_when_training)
    second = _launch(setup, "two", "relaunched")
    return first, second


def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_exits_0(setup, preempted):
    first, _ = preempted
    assert first.codes == [0, 0], "\n".join(tail(log) for log in first.logs)
    stops = [_stopped_at(log) for log in first.logs]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops
    step = stops[0][0]
    assert step < N // 2, f"SIGTERM was meant to land before step {N // 2}, stopped at {step}"
    data = setup.tmp / "two" / "checkpoints" / str(step) / "data"
    assert sorted(p.name for p in data.glob("process_*")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]


def test_two_processes_continue_like_one_process_with_two_devices(setup, reference, preempted):
    first, second = preempted
    assert second.codes == [0, 0], "\n".join(tail(log) for log in second.logs)
    step = _stopped_at(first.logs[0])[0]
    assert f"resuming from {setup.tmp}/two/checkpoints/{step}" in second.logs[0]
    workdir = setup.tmp / "two"
    want, got = losses(reference), losses(workdir)
    assert sorted(got) == list(range(1, N + 1)), sorted(got)
    for s in range(1, N + 1):
        np.testing.assert_allclose(got[s], want[s], rtol=1e-5, err_msg=f"loss at step {s}")
    _assert_reference_batches(workdir, reference, range(1, N + 1), rows=2)
    _assert_same_state(workdir, reference)
    assert not re.search(r"\bTraceback\b", "".join(second.logs))


def test_a_two_process_checkpoint_resumes_in_one_process(setup, reference, preempted):
    _, second = preempted
    assert second.codes == [0, 0]
    workdir = setup.tmp / "to_one"
    _copy_at(setup.tmp / "two", workdir, N // 2)
    run = _single(setup, "to_one", "to_one")
    assert run.codes == [0], tail(run.logs[0])
    assert f"resuming from {workdir}/checkpoints/{N // 2}" in run.logs[0]
    assert "another process count or batch size" in run.logs[0]
    _assert_reference_batches(workdir, reference, range(N // 2 + 1, N + 1), rows=4)
    _assert_same_state(workdir, reference)


def test_a_one_process_checkpoint_resumes_in_two_processes(setup, reference):
    workdir = setup.tmp / "to_two"
    _copy_at(reference, workdir, N // 2)
    run = _launch(setup, "to_two", "to_two")
    assert run.codes == [0, 0], "\n".join(tail(log) for log in run.logs)
    assert "another process count or batch size" in run.logs[0]
    _assert_reference_batches(workdir, reference, range(N // 2 + 1, N + 1), rows=2)
    _assert_same_state(workdir, reference)


@pytest.mark.parametrize("victim", [0, 1], ids=["coordinator_killed", "worker_killed"])
def test_sigkill_of_one_process_stops_the_other_with_a_message(setup, reference, victim):
    del reference  # only for its warm compilation cache
    workdir, port = f"killed_{victim}", _free_port()
    procs, logs, t0 = [], [], time.monotonic()
    for i in range(2):
        logs.append(setup.tmp / f"killed_{victim}_{i}.log")
        with open(logs[-1], "w") as f:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "f3_jax.train",
                        *_train_args(setup, workdir),
                        f"--coordinator_address=127.0.0.1:{port}",
                        "--num_processes=2",
                        f"--process_id={i}",
                    ],
                    cwd=setup.tmp,
                    env=setup.env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )
    try:
        _poll(procs[0], t0, lambda: batch_records(setup.tmp / workdir) or None, "a batch")
        procs[victim].kill()
        killed_at = time.monotonic()
        survivor = procs[1 - victim]
        code = _wait(survivor, killed_at, timeout=HEARTBEAT_S + 90)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
    log = logs[1 - victim].read_text()
    assert code != 0, tail(log)
    assert waited < HEARTBEAT_S + 90
    assert re.search(r"another task died|heartbeat|UNAVAILABLE", log), tail(log)


def _two_direct(setup: Setup, workdir: str, name: str, extra=(), cwds=None) -> Run:
    """Two processes started here (not through the launcher), e.g. in different directories."""
    port, procs, logs, t0 = _free_port(), [], [], time.monotonic()
    for i in range(2):
        logs.append(setup.tmp / f"{name}_{i}.log")
        cwd = cwds[i] if cwds else setup.tmp
        with open(logs[-1], "w") as f:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "f3_jax.train",
                        *_train_args(setup, workdir),
                        *extra,
                        f"--coordinator_address=127.0.0.1:{port}",
                        "--num_processes=2",
                        f"--process_id={i}",
                    ],
                    cwd=cwd,
                    env=setup.env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )
    codes = [_wait(p, t0, timeout=240) for p in procs]
    return Run(codes, [log.read_text() for log in logs], time.monotonic() - t0)


def test_an_unreachable_coordinator_is_an_error_not_a_hang(setup):
    port = _free_port()  # nobody listens there
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "f3_jax.train", *_train_args(setup, "unreachable"),
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
         "--distributed_timeout=5"],
        cwd=setup.tmp, env=setup.env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode != 0
    assert f"could not join the distributed run at 127.0.0.1:{port}" in out.stderr, out.stderr[
        -3000:
    ]
    assert time.monotonic() - t0 < 120
    assert not (setup.tmp / "unreachable").exists()


def test_a_mesh_that_does_not_fit_the_devices_stops_every_process(setup):
    run = _two_direct(setup, "bad_mesh", "bad_mesh", extra=["--config.mesh.data=4"])
    for code, log in zip(run.codes, run.logs):
        assert code == 2, tail(log)
        assert "does not divide the 2 devices" in log, tail(log)


def test_a_workdir_the_processes_do_not_share_is_an_error(setup):
    # A relative workdir from two working directories: two different directories, as on
    # hosts without a shared filesystem.
    cwds = [setup.tmp / "host_a", setup.tmp / "host_b"]
    for cwd in cwds:
        cwd.mkdir()
    run = _two_direct(setup, "not_shared", "not_shared", cwds=cwds)
    for code, log in zip(run.codes, run.logs):
        assert code == 2, tail(log)
        assert "not_shared is not reachable by every process: processes [1]" in log, tail(log)
    assert not (cwds[0] / "not_shared" / "checkpoints").exists()
