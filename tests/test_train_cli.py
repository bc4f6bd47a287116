"""`python -m f3_jax.train` as a real subprocess: outputs, SIGTERM, SIGKILL + exact resume, errors.

Runs (tests/cli_runs.py: one tiny config, one process of two devices, one compilation cache):
the reference run of N steps (conftest's `cli_reference`, shared with test_multiprocess.py);
an interrupted run of the same config over one workdir in three processes: SIGTERM early
(saves at the next step boundary, exits 0), rerun (resumes from that checkpoint) SIGKILLed once
checkpoint N/2 is on disk, rerun to N. The interrupted run must end with the reference's state,
bit for bit, and every process of it must have seen the reference's batch at every step
(`--record_batch_ids`).
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from f3_jax import checkpoint, exports
from tests.cli_runs import (
    N,
    Run,
    batch_records,
    checkpoint_steps,
    complete_checkpoint,
    event_steps,
    finish,
    start,
    tail,
    wait_for,
    write_config,
)


def _resumed_from(run: Run) -> int | None:
    """The step of the "resuming from .../checkpoints/<step>" line of a run's log."""
    found = re.findall(r"resuming from \S*/interrupted/checkpoints/(\d+)\b", run.log)
    return int(found[0]) if len(found) == 1 else None


def _assert_clean_exit(run: Run) -> None:
    assert run.returncode == 0, tail(run.log)
    for bad in ("Traceback", "Exception ignored", "cannot schedule new futures"):
        assert bad not in run.log, f"{bad!r} in the log of a normal finish:\n{tail(run.log, 80)}"


@pytest.fixture(scope="module")
def setup(cli_setup):
    return cli_setup


@pytest.fixture(scope="module")
def reference(cli_reference):
    return cli_reference


@pytest.fixture(scope="module")
def interrupted(setup, reference) -> tuple[Path, dict[str, Run], dict[str, list[dict]]]:
    """The same run over one workdir: SIGTERM early, rerun SIGKILLed after N/2, rerun to N.

    Depends on `reference` only so that it runs after it and finds the compilation cache warm.
    """
    workdir = setup.tmp / "interrupted"
    runs = {}

    proc = start(setup, workdir, "sigterm")
    # The first batch's ids are written just before step 1 is compiled and run.
    wait_for(proc, "the first batch", lambda: len(batch_records(workdir)) > 0)
    proc.send_signal(signal.SIGTERM)
    runs["sigterm"] = finish(proc)
    runs["sigterm"].checkpoints = checkpoint_steps(workdir)
    after_sigterm = len(batch_records(workdir))

    proc = start(setup, workdir, "sigkill")
    wait_for(proc, f"checkpoint {N // 2}", lambda: complete_checkpoint(workdir, N // 2))
    proc.kill()
    runs["sigkill"] = finish(proc)
    after_sigkill = len(batch_records(workdir))
    runs["sigkill"].checkpoints = checkpoint_steps(workdir)

    runs["final"] = finish(start(setup, workdir, "final"))
    all_records = batch_records(workdir)
    records = {
        "sigterm": all_records[:after_sigterm],
        "sigkill": all_records[after_sigterm:after_sigkill],
        "final": all_records[after_sigkill:],
    }
    return workdir, runs, records


def test_missing_data_dir_stops_before_compute(setup):
    missing = setup.tmp / "no_such_data"
    config = write_config(setup.tmp / "missing_data_config.py", str(missing))
    workdir = setup.tmp / "missing"
    run = finish(start(setup, workdir, "missing", config), timeout=120)
    assert run.returncode == 2, tail(run.log)
    assert f"data.path='{missing}' does not exist" in run.log, tail(run.log)
    assert "Traceback" not in run.log, tail(run.log)
    # Nothing was built, restored or written: the check comes before the model and the data.
    assert not (workdir / "checkpoints").exists() and not (workdir / "train").exists()


def test_quickstart_run_writes_logs_checkpoints_and_export(reference):
    workdir, run = reference
    _assert_clean_exit(run)
    events = event_steps(workdir / "train")
    assert events.get("loss/total") == set(range(1, N + 1)), sorted(events)
    assert events.get("valid/mel_distance") == {4, 6}, sorted(events)
    assert events.get("samples/0/reconstruction") == events.get("spectrogram/0") == {4}
    metrics = [
        json.loads(x) for x in (workdir / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = {m["step"]: m["loss/total"] for m in metrics if "loss/total" in m}
    assert sorted(losses) == list(range(1, N + 1))
    assert all(np.isfinite(v) for v in losses.values()), losses
    assert losses[6] < losses[1], losses
    assert {m["step"] for m in metrics if "valid/mel_distance" in m} == {4, 6}
    assert checkpoint_steps(workdir) == [N // 2, N]
    assert all(complete_checkpoint(workdir, s) for s in (N // 2, N))
    variables, config, step = exports.read(str(workdir / "export"))
    assert step == N and config.train.steps == N and variables["params"]


def test_sigterm_saves_at_the_step_boundary_and_exits_0(interrupted):
    workdir, runs, records = interrupted
    _assert_clean_exit(runs["sigterm"])
    stopped = records["sigterm"][-1]["step"]
    assert stopped < N // 2, f"SIGTERM was meant to land in step 1, the run stopped at {stopped}"
    assert f"stopping at step {stopped} after saving a checkpoint" in runs["sigterm"].log
    assert runs["sigterm"].checkpoints == [stopped]
    assert complete_checkpoint(workdir, stopped)
    assert _resumed_from(runs["sigkill"]) == stopped
    assert records["sigkill"][0]["step"] == stopped + 1  # the rerun went on from that step


def test_sigkill_then_resume_equals_an_uninterrupted_run(reference, interrupted):
    ref_dir, ref_run = reference
    workdir, runs, records = interrupted
    assert runs["sigkill"].returncode == -signal.SIGKILL, tail(runs["sigkill"].log)
    # The kill must land before the run could finish, else nothing was resumed.
    assert max(runs["sigkill"].checkpoints) == N // 2, runs["sigkill"].checkpoints
    _assert_clean_exit(runs["final"])
    assert _resumed_from(runs["final"]) == N // 2
    assert [r["step"] for r in records["final"]] == list(range(N // 2 + 1, N + 1))

    # Data order: every process saw the reference's batch at every step it ran (the killed
    # one's work past N/2 included).
    want = {r["step"]: r["ids"] for r in batch_records(ref_dir)}
    assert sorted(want) == list(range(1, N + 1))
    for phase, recs in records.items():
        for r in recs:
            assert r["ids"] == want[r["step"]], (phase, r, want[r["step"]])

    # Parameters, optimizer state, counters and RNG: bit for bit.
    ref, got = _restore(ref_dir, N), _restore(workdir, N)
    flat_ref, flat_got = exports.flat_arrays(ref), exports.flat_arrays(got)
    assert flat_ref.keys() == flat_got.keys()
    for key, value in flat_ref.items():
        np.testing.assert_array_equal(flat_got[key], value, err_msg=key)


def _restore(workdir: Path, step: int):
    ckpt = checkpoint.Checkpointer(str(workdir))
    try:
        return jax.device_get(ckpt.restore_raw(step))
    finally:
        ckpt.close()
