"""`python -m f3_jax.train` as real subprocesses: the shared tiny config, data, environment and
helpers of tests/test_train_cli.py and tests/test_multiprocess.py.

Every run is a separate process bounded by a timeout that SIGKILLs it. All runs share one tiny
dataset, one config and one persistent XLA compilation cache (pytest's cache directory when
there is one), because compiling dominates the time of such short runs on CPU: the reference
run (one process, two devices; the `cli_reference` fixture in conftest.py) compiles the steps
once for every later run of the same shape, and is itself the run both test files compare with.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from f3_jax.data.synthetic import tone, write_record_dir

REPO = Path(__file__).resolve().parents[1]
SR = 8000
N = 6  # steps; checkpoints at N/2 and N
RUN_TIMEOUT_S = 600  # one subprocess, cold compile on a loaded 2-core machine included
ITEMS = ("state", "data", "config")

CONFIG_TEMPLATE = '''
"""Tiny stage-1 config for the train CLI tests (written by tests/cli_runs.py)."""

from tests.ae_fixtures import tiny_ae_config


def get_config():
    c = tiny_ae_config()
    c.data.path = {data_path!r}
    c.data.eval_batch_size = 4
    c.data.eval_max_seconds = 0.5
    c.data.eval_bucket_seconds = (0.5,)
    # The loop is under test, not the model (tests/test_train_ae.py has the GAN): no
    # discriminator, fewer loss branches; tracing and compiling dominate such runs.
    c.discriminator.use_mpd = False
    c.train.adversarial_start = 1000
    c.loss.mel_window_sizes = (128,)
    c.loss.mel_bins = (16,)
    c.loss.stft_fft_sizes = (128,)
    c.mesh.data = 2  # one process of two devices, or two processes of one
    c.train.batch_size = 4
    c.train.steps = {steps}
    c.train.checkpoint_every = {steps} // 2
    c.train.log_every = 1
    c.train.eval_every = 4
    c.train.sample_every = 4
    return c
'''


@dataclass
class Setup:
    config: Path
    env: dict  # one CPU device per process
    env_two_devices: dict
    tmp: Path


@dataclass
class Run:
    """One finished (or killed) training process."""

    returncode: int
    log: str
    seconds: float
    checkpoints: list[int] | None = None  # steps on disk right after it ended, when asked


def utterances(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"wav": tone(rng.uniform(0.2, 0.5), SR, rng), "id": f"s{seed}-{i:02d}"} for i in range(n)
    ]


def subprocess_env(cache_dir: Path) -> dict:
    """One CPU device per process (conftest's 8 are dropped), the repo importable, the cache."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


def write_config(path: Path, data_path: str, steps: int = N) -> Path:
    path.write_text(CONFIG_TEMPLATE.format(data_path=data_path, steps=steps))
    return path


def compilation_cache_dir(pytestconfig, tmp: Path) -> Path:
    """pytest's cache directory when there is one, so that later sessions skip compiling
    (XLA's cache keys include the program, the flags and the jax version)."""
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    return Path(cache.mkdir("f3_jax_xla_cache")) if cache is not None else tmp / "jax_cache"


def make_setup(tmp: Path, pytestconfig) -> Setup:
    data = tmp / "data"
    # 12 training clips in global batches of 4: N=6 steps cross two epoch boundaries.
    write_record_dir(
        str(data), {"train": utterances(12, 0), "valid": utterances(4, 1)}, sample_rate=SR
    )
    env = subprocess_env(compilation_cache_dir(pytestconfig, tmp))
    two = dict(env, XLA_FLAGS=f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count=2")
    return Setup(write_config(tmp / "tiny_config.py", str(data)), env, two, tmp)


def start(setup: Setup, workdir: Path, name: str, config: Path | None = None) -> subprocess.Popen:
    """One process of two devices in setup.tmp with a relative --workdir (the quick start)."""
    cmd = [
        sys.executable, "-m", "f3_jax.train",
        "--config", str(config or setup.config),
        "--workdir", os.path.relpath(workdir, setup.tmp),
        "--record_batch_ids",
    ]  # fmt: skip
    log = open(setup.tmp / f"{name}.log", "w")  # a file: orbax logs more than a pipe holds
    proc = subprocess.Popen(
        cmd, cwd=setup.tmp, env=setup.env_two_devices, stdout=log, stderr=subprocess.STDOUT
    )
    proc.log_path, proc.started = log.name, time.monotonic()
    log.close()
    return proc


def finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> Run:
    """Waits for the process; past the timeout it is SIGKILLed and the test fails."""
    try:
        proc.wait(timeout=max(1.0, timeout - (time.monotonic() - proc.started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args} ran past {timeout} s:\n{tail(Path(proc.log_path).read_text())}")
    return Run(proc.returncode, Path(proc.log_path).read_text(), time.monotonic() - proc.started)


def wait_for(proc: subprocess.Popen, what: str, ready: Callable[[], bool]) -> None:
    """Polls until ready(); fails (killing the process) if it exits first or takes too long."""
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {what}:\n{tail(finish(proc).log)}")
        if time.monotonic() - proc.started > RUN_TIMEOUT_S:
            proc.kill()
            pytest.fail(f"no {what} after {RUN_TIMEOUT_S} s:\n{tail(finish(proc).log)}")
        time.sleep(0.02)


def tail(log: str, lines: int = 40) -> str:
    return "\n".join(log.splitlines()[-lines:])


def batch_records(workdir: Path) -> list[dict]:
    path = workdir / "train" / "batch_ids.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def complete_checkpoint(workdir: Path, step: int) -> bool:
    # Orbax writes into a temporary directory and renames it to <step> once every item is
    # committed, so the final name with all items present means the save finished.
    return all((workdir / "checkpoints" / str(step) / item).is_dir() for item in ITEMS)


def checkpoint_steps(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def event_steps(logdir: Path) -> dict[str, set[int]]:
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


def losses(workdir: Path) -> dict[int, float]:
    lines = (workdir / "train" / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m["loss/total"] for m in map(json.loads, lines) if "loss/total" in m}


def run_cli(
    setup: Setup, workdir: Path, *flags: str, launcher: Path | None = None, name: str = "run"
) -> tuple[int, str]:
    """`python -m f3_jax.train` (or a launcher script) on the tiny config with extra flags,
    one process of two devices; returns (exit code, log)."""
    cmd = [sys.executable, *([str(launcher)] if launcher else ["-m", "f3_jax.train"])]
    cmd += ["--config", str(setup.config), "--workdir", str(workdir), *flags]
    log = setup.tmp / f"{workdir.name}-{name}.log"
    with open(log, "w") as out:
        proc = subprocess.run(
            cmd, cwd=setup.tmp, env=setup.env_two_devices, stdout=out, stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
    return proc.returncode, log.read_text()
