"""`python -m f3_jax.tokenize` as a subprocess: memory flat with duration, bad inputs refused.

The model is a tiny 8 kHz export (hop 40, 200 latent frames a second) made cheaper still (2
channels, one residual unit per stage): its speed, not its quality, bounds these tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from f3_jax import exports
from tests.ae_fixtures import tiny_ae_config
from tests.test_tokenizer import random_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT_S, LONG_S = 20, 20 * 60
FRAME_RATE = 200  # 8000 / 40
WIDTH = 8
# Allowed growth of the peak RSS from 20 s to 20 min, beyond the latents: XLA's and the
# allocator's own drift between runs. The whole-file CLI grew by 73 MB (decode) and 80 MB
# (encode); streaming by -9 to +10 MB (2-core CPU).
SLACK_MB = 32


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    config = tiny_ae_config(**{"model.channels": 2, "model.dilations": (1,)})
    path = str(tmp_path_factory.mktemp("tokenize_export"))
    exports.write(path, random_variables(config), config, step=1)
    return path


def cli(workdir: str, *args) -> tuple[int, str, float]:
    """Runs the CLI; returns (exit status, stderr, peak RSS in MB) of that one process.

    glibc keeps freed memory and gives each thread an arena of its own, so that the RSS of a
    process that computes for minutes drifts up by tens of MB whatever it holds; one arena
    pair and mmap for blocks from 64 KiB make the peak RSS follow what is actually held.
    """
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        JAX_PLATFORMS="cpu",
        MALLOC_ARENA_MAX="2",
        MALLOC_MMAP_THRESHOLD_="65536",
    )
    env.pop("XLA_FLAGS", None)  # one CPU device, as users run it
    cmd = [sys.executable, "-m", "f3_jax.tokenize", *map(str, args), "--workdir", workdir]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage, not all children's
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, stderr, usage.ru_maxrss / 1024


def write_noise(path, seconds: int, rate: int = 16000) -> None:
    """Noise at 16 kHz (resampled to 8 kHz by encode), written a block at a time."""
    rng = np.random.default_rng(seconds)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        for _ in range(0, seconds, 10):
            f.write(np.clip(0.3 * rng.standard_normal(10 * rate), -1, 1))


def test_cli_memory_does_not_grow_with_duration(workdir, tmp_path):
    runs = {}
    for name, seconds in (("short", SHORT_S), ("long", LONG_S)):
        write_noise(tmp_path / f"{name}.wav", seconds)
        z = np.random.default_rng(1).standard_normal((seconds * FRAME_RATE, WIDTH))
        np.save(tmp_path / f"{name}_z.npy", z.astype(np.float32))
        runs[f"encode {name}"] = ("encode", tmp_path / f"{name}.wav", tmp_path / f"{name}.npy")
        runs[f"decode {name}"] = ("decode", tmp_path / f"{name}_z.npy", tmp_path / f"{name}.wav")
    with ThreadPoolExecutor(2) as pool:  # independent processes: two at a time on 2 cores
        results = dict(zip(runs, pool.map(lambda args: cli(workdir, *args), runs.values())))
    for name, (status, stderr, _) in results.items():
        assert status == 0, (name, stderr[-2000:])
    assert np.load(tmp_path / "long.npy", mmap_mode="r").shape == (LONG_S * FRAME_RATE, WIDTH)
    assert sf.info(tmp_path / "long.wav").frames == LONG_S * 8000
    latents_mb = LONG_S * FRAME_RATE * WIDTH * 4 / 2**20
    peaks = {c: (results[f"{c} short"][2], results[f"{c} long"][2]) for c in ("encode", "decode")}
    for command, (short, long) in peaks.items():
        print(f"{command}: peak RSS {short:.0f} MB for {SHORT_S} s, {long:.0f} MB for {LONG_S} s")
    for command, (short, long) in peaks.items():
        assert long <= short + latents_mb + SLACK_MB, (command, short, long)


def _bad_inputs(tmp: str) -> list[tuple[str, str, str]]:
    """(command, input file, what stderr must say), the inputs written under tmp."""

    def npy(name: str, array: np.ndarray, **kw) -> str:
        path = os.path.join(tmp, name)
        np.save(path, array, **kw)
        return path

    def raw(name: str, data: bytes) -> str:
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    z = np.zeros((10, WIDTH), np.float32)
    nan, inf = z.copy(), z.copy()
    nan[5, 2], inf[7, 0] = np.nan, -np.inf
    truncated = npy("truncated.npy", z)
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) - 4)
    nan_wav = os.path.join(tmp, "nan.wav")
    sf.write(nan_wav, np.full(8000, np.nan, np.float32), 8000, subtype="FLOAT")
    empty_wav = os.path.join(tmp, "empty.wav")
    sf.write(empty_wav, np.zeros(0, np.float32), 8000)
    objects = np.array([{"a": 1}], dtype=object)
    return [
        ("decode", npy("nan.npy", nan), "NaN or Inf (first at frame 5)"),
        ("decode", npy("inf.npy", inf), "NaN or Inf (first at frame 7)"),
        ("decode", npy("empty.npy", z[:0]), "no latent frames"),
        ("decode", npy("flat.npy", z.reshape(-1)), "shape (80,), expected (T, D)"),
        ("decode", npy("3d.npy", z[None]), "shape (1, 10, 8), expected (T, D)"),
        ("decode", npy("narrow.npy", z[:, :5]), f"shape (10, 5), expected (T, {WIDTH})"),
        ("decode", npy("ints.npy", z.astype(np.int32)), "dtype int32"),
        ("decode", npy("pickled.npy", objects, allow_pickle=True), "dtype object"),
        ("decode", raw("text.npy", b"not an array\n"), "not a .npy file"),
        ("decode", truncated, "truncated"),
        ("decode", os.path.join(tmp, "missing.npy"), "No such file"),
        ("encode", empty_wav, "empty audio"),
        ("encode", nan_wav, "NaN or Inf"),
        ("encode", raw("noise.wav", bytes(range(256)) * 8), "cannot decode"),
        ("encode", os.path.join(tmp, "missing.wav"), "no such file"),
    ]


def test_cli_bad_input_is_one_line_and_status_2(workdir, tmp_path):
    cases = _bad_inputs(str(tmp_path))
    outputs = [
        str(tmp_path / f"out{i}.{'wav' if c == 'decode' else 'npy'}")
        for i, (c, *_) in enumerate(cases)
    ]

    def run(i: int) -> tuple[int, str, float]:
        command, src, _ = cases[i]
        return cli(workdir, command, src, outputs[i])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(len(cases))))
    for (command, src, says), out, (status, stderr, _) in zip(cases, outputs, results):
        case = f"{command} {os.path.basename(src)}: {stderr!r}"
        assert status == 2, case
        assert stderr.count("\n") == 1 and stderr.startswith(f"error: tokenize {command}: "), case
        assert src in stderr and says in stderr, case
        assert not os.path.exists(out), case  # nothing written, or the partial output removed
