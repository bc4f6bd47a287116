"""`python -m f3_jax.train` as a real subprocess: outputs, SIGTERM, SIGKILL + exact resume, errors.

Every training run is a separate process bounded by a timeout that SIGKILLs it. They share one
tiny dataset and one persistent XLA compilation cache (the first run compiles, later runs mostly
trace), because compiling dominates the time of such short runs on CPU.

Runs: a reference run of N steps; an interrupted run of the same config over one workdir in three
processes: SIGTERM early (saves at the next step boundary, exits 0), rerun (resumes from that
checkpoint) SIGKILLed once checkpoint N/2 is on disk, rerun to N. The interrupted run must end
with the reference's state, bit for bit, and every process of it must have seen the reference's
batch at every step (`--record_batch_ids`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pytest

from f3_jax import checkpoint
from f3_jax.data.synthetic import tone, write_record_dir

REPO = Path(__file__).resolve().parents[1]
SR = 8000
N = 6  # steps; checkpoints at N/2 and N
RUN_TIMEOUT_S = 480  # one subprocess, cold compile on a loaded 2-core machine included
ITEMS = ("state", "data", "config")

CONFIG_TEMPLATE = '''
"""Tiny stage-1 config for the train CLI tests (written by tests/test_train_cli.py)."""

from tests.ae_fixtures import tiny_ae_config


def get_config():
    c = tiny_ae_config()
    c.data.path = {data_path!r}
    c.data.eval_batch_size = 4
    c.data.eval_max_seconds = 0.5
    c.data.eval_bucket_seconds = (0.5,)
    # Fewer loss and discriminator branches: the loop, not the model, is under test, and
    # tracing/compiling them dominates the run time.
    c.discriminator.use_mpd = False
    c.loss.mel_window_sizes = (128,)
    c.loss.mel_bins = (16,)
    c.loss.stft_fft_sizes = (128,)
    c.train.batch_size = 4
    c.train.steps = {steps}
    c.train.checkpoint_every = {steps} // 2
    c.train.log_every = 2
    c.train.eval_every = 4
    c.train.sample_every = 4
    return c
'''


@dataclass
class Run:
    """One finished (or killed) training process."""

    returncode: int
    log: str
    seconds: float
    checkpoints: list[int] | None = None  # steps on disk right after it ended, when asked


@dataclass
class Setup:
    config: Path
    env: dict
    tmp: Path


def _utterances(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"wav": tone(rng.uniform(0.2, 0.5), SR, rng), "id": f"s{seed}-{i:02d}"} for i in range(n)
    ]


def _subprocess_env(cache_dir: Path) -> dict:
    env = dict(os.environ)
    # conftest asks for 8 host devices; the CLI runs use one (the config's mesh is 1x1x1).
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


def _write_config(path: Path, data_path: str, steps: int = N) -> Path:
    path.write_text(CONFIG_TEMPLATE.format(data_path=data_path, steps=steps))
    return path


def _compilation_cache_dir(pytestconfig, tmp: Path) -> Path:
    """pytest's cache directory when there is one, so that later sessions skip compiling
    (XLA's cache keys include the program, the flags and the jax version)."""
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    return Path(cache.mkdir("f3_jax_xla_cache")) if cache is not None else tmp / "jax_cache"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pytestconfig) -> Setup:
    tmp = tmp_path_factory.mktemp("train_cli")
    data = tmp / "data"
    # 12 training clips in batches of 4: N=6 steps cross two epoch boundaries (reshuffles).
    write_record_dir(
        str(data), {"train": _utterances(12, 0), "valid": _utterances(4, 1)}, sample_rate=SR
    )
    return Setup(
        _write_config(tmp / "tiny_config.py", str(data)),
        _subprocess_env(_compilation_cache_dir(pytestconfig, tmp)),
        tmp,
    )


def _start(setup: Setup, workdir: Path, name: str, config: Path | None = None) -> subprocess.Popen:
    """Starts a run in setup.tmp with a relative --workdir, as in the README's quick start."""
    cmd = [
        sys.executable, "-m", "f3_jax.train",
        "--config", str(config or setup.config),
        "--workdir", os.path.relpath(workdir, setup.tmp),
        "--record_batch_ids",
    ]  # fmt: skip
    log = open(setup.tmp / f"{name}.log", "w")  # a file: orbax logs more than a pipe holds
    proc = subprocess.Popen(cmd, cwd=setup.tmp, env=setup.env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path, proc.started = log.name, time.monotonic()
    log.close()
    return proc


def _finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> Run:
    """Waits for the process; past the timeout it is SIGKILLed and the test fails."""
    try:
        proc.wait(timeout=max(1.0, timeout - (time.monotonic() - proc.started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args} ran past {timeout} s:\n{_tail(Path(proc.log_path).read_text())}")
    return Run(proc.returncode, Path(proc.log_path).read_text(), time.monotonic() - proc.started)


def _wait_for(proc: subprocess.Popen, what: str, ready: Callable[[], bool]) -> None:
    """Polls until ready(); fails (killing the process) if it exits first or takes too long."""
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {what}:\n{_tail(_finish(proc).log)}")
        if time.monotonic() - proc.started > RUN_TIMEOUT_S:
            proc.kill()
            pytest.fail(f"no {what} after {RUN_TIMEOUT_S} s:\n{_tail(_finish(proc).log)}")
        time.sleep(0.02)


def _tail(log: str, lines: int = 40) -> str:
    return "\n".join(log.splitlines()[-lines:])


def _batch_records(workdir: Path) -> list[dict]:
    path = workdir / "train" / "batch_ids.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _complete_checkpoint(workdir: Path, step: int) -> bool:
    # Orbax writes into a temporary directory and renames it to <step> once every item is
    # committed, so the final name with all items present means the save finished.
    return all((workdir / "checkpoints" / str(step) / item).is_dir() for item in ITEMS)


def _checkpoint_steps(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def _event_steps(logdir: Path) -> dict[str, set[int]]:
    """{tag: steps} of every summary in the TensorBoard event files under logdir.

    Event files are TFRecord files: u64 length, u32 CRC, the serialized Event, u32 CRC.
    """
    from tensorboardX.proto import event_pb2

    steps: dict[str, set[int]] = {}
    for path in logdir.glob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                steps.setdefault(value.tag, set()).add(event.step)
    return steps


def _resumed_from(run: Run) -> int | None:
    """The step of the "resuming from .../checkpoints/<step>" line of a run's log."""
    found = re.findall(r"resuming from \S*/interrupted/checkpoints/(\d+)\b", run.log)
    return int(found[0]) if len(found) == 1 else None


def _assert_clean_exit(run: Run) -> None:
    assert run.returncode == 0, _tail(run.log)
    for bad in ("Traceback", "Exception ignored", "cannot schedule new futures"):
        assert bad not in run.log, f"{bad!r} in the log of a normal finish:\n{_tail(run.log, 80)}"


@pytest.fixture(scope="module")
def reference(setup) -> tuple[Path, Run]:
    """An uninterrupted run of N steps (the README quick-start path, on a tiny dataset)."""
    workdir = setup.tmp / "reference"
    return workdir, _finish(_start(setup, workdir, "reference"))


@pytest.fixture(scope="module")
def interrupted(setup, reference) -> tuple[Path, dict[str, Run], dict[str, list[dict]]]:
    """The same run over one workdir: SIGTERM early, rerun SIGKILLed after N/2, rerun to N.

    Depends on `reference` only so that it runs second and finds the compilation cache warm.
    """
    workdir = setup.tmp / "interrupted"
    runs = {}

    proc = _start(setup, workdir, "sigterm")
    # The first batch's ids are written just before step 1 is compiled and run.
    _wait_for(proc, "the first batch", lambda: len(_batch_records(workdir)) > 0)
    proc.send_signal(signal.SIGTERM)
    runs["sigterm"] = _finish(proc)
    runs["sigterm"].checkpoints = _checkpoint_steps(workdir)
    after_sigterm = len(_batch_records(workdir))

    proc = _start(setup, workdir, "sigkill")
    _wait_for(proc, f"checkpoint {N // 2}", lambda: _complete_checkpoint(workdir, N // 2))
    proc.kill()
    runs["sigkill"] = _finish(proc)
    after_sigkill = len(_batch_records(workdir))
    runs["sigkill"].checkpoints = _checkpoint_steps(workdir)

    runs["final"] = _finish(_start(setup, workdir, "final"))
    all_records = _batch_records(workdir)
    records = {
        "sigterm": all_records[:after_sigterm],
        "sigkill": all_records[after_sigterm:after_sigkill],
        "final": all_records[after_sigkill:],
    }
    return workdir, runs, records


def test_missing_data_dir_stops_before_compute(setup):
    missing = setup.tmp / "no_such_data"
    config = _write_config(setup.tmp / "missing_data_config.py", str(missing))
    workdir = setup.tmp / "missing"
    run = _finish(_start(setup, workdir, "missing", config), timeout=120)
    assert run.returncode == 1, _tail(run.log)
    assert f"data.path='{missing}' does not exist" in run.log, _tail(run.log)
    assert "Traceback" not in run.log, _tail(run.log)
    # Nothing was built, restored or written: the check comes before the model and the data.
    assert not (workdir / "checkpoints").exists() and not (workdir / "train").exists()


def test_quickstart_run_writes_logs_checkpoints_and_export(reference):
    workdir, run = reference
    _assert_clean_exit(run)
    events = _event_steps(workdir / "train")
    assert events.get("loss/gen_total") == {2, 4, 6}, sorted(events)
    assert events.get("valid/mel_distance") == {4, 6}, sorted(events)
    assert events.get("samples/0/reconstruction") == events.get("spectrogram/0") == {4}
    metrics = [
        json.loads(x) for x in (workdir / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = {m["step"]: m["loss/gen_total"] for m in metrics if "loss/gen_total" in m}
    assert sorted(losses) == [2, 4, 6]
    assert all(np.isfinite(v) for v in losses.values()), losses
    assert losses[6] < losses[2], losses
    assert {m["step"] for m in metrics if "valid/mel_distance" in m} == {4, 6}
    assert _checkpoint_steps(workdir) == [N // 2, N]
    assert all(_complete_checkpoint(workdir, s) for s in (N // 2, N))
    variables, config, step = checkpoint.read_export(str(workdir / "export"))
    assert step == N and config.train.steps == N and variables["params"]


def test_sigterm_saves_at_the_step_boundary_and_exits_0(interrupted):
    workdir, runs, records = interrupted
    _assert_clean_exit(runs["sigterm"])
    stopped = records["sigterm"][-1]["step"]
    assert stopped < N // 2, f"SIGTERM was meant to land in step 1, the run stopped at {stopped}"
    assert f"stopping at step {stopped} after saving a checkpoint" in runs["sigterm"].log
    assert runs["sigterm"].checkpoints == [stopped]
    assert _complete_checkpoint(workdir, stopped)
    assert _resumed_from(runs["sigkill"]) == stopped
    assert records["sigkill"][0]["step"] == stopped + 1  # the rerun went on from that step


def test_sigkill_then_resume_equals_an_uninterrupted_run(reference, interrupted):
    ref_dir, ref_run = reference
    workdir, runs, records = interrupted
    assert runs["sigkill"].returncode == -signal.SIGKILL, _tail(runs["sigkill"].log)
    # The kill must land before the run could finish, else nothing was resumed.
    assert max(runs["sigkill"].checkpoints) == N // 2, runs["sigkill"].checkpoints
    _assert_clean_exit(runs["final"])
    assert _resumed_from(runs["final"]) == N // 2
    assert [r["step"] for r in records["final"]] == list(range(N // 2 + 1, N + 1))

    # Data order: every process saw the reference's batch at every step it ran (the killed
    # one's work past N/2 included).
    want = {r["step"]: r["ids"] for r in _batch_records(ref_dir)}
    assert sorted(want) == list(range(1, N + 1))
    for phase, recs in records.items():
        for r in recs:
            assert r["ids"] == want[r["step"]], (phase, r, want[r["step"]])

    # Parameters, optimizer state, counters and RNG: bit for bit.
    ref, got = _restore(ref_dir, N), _restore(workdir, N)
    flat_ref, flat_got = checkpoint._flat_params(ref), checkpoint._flat_params(got)
    assert flat_ref.keys() == flat_got.keys()
    for key, value in flat_ref.items():
        np.testing.assert_array_equal(flat_got[key], value, err_msg=key)


def _restore(workdir: Path, step: int):
    ckpt = checkpoint.Checkpointer(str(workdir))
    try:
        return jax.device_get(ckpt.restore_raw(step))
    finally:
        ckpt.close()
