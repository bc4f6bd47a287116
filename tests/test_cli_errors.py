"""Every command line turns a user error into one line naming the file, flag or field, exit 2.

Table-driven: each case runs the real CLI as a subprocess on a bad input and checks the exit
status, that stderr is one or two lines naming what is wrong, and that no traceback shows.
None of these cases may get as far as compiling anything: they are checked before compute.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from f3_jax.data.synthetic import tone, write_record_dir
from tests.cli_runs import REPO

CASES = {
    # name: (argv after `python -m`, text stderr must contain)
    "train_missing_config": (
        ["f3_jax.train", "--config", "configs/nope.py", "--workdir", "{tmp}/w_{name}"],
        "--config=configs/nope.py: no such config file",
    ),
    "train_unknown_field": (
        [
            "f3_jax.train",
            "--config",
            "configs/ae_demo.py",
            "--workdir",
            "{tmp}/w_{name}",
            "--config.train.stepz=3",
        ],
        "did you mean train.steps?",
    ),
    "train_bad_value": (
        [
            "f3_jax.train",
            "--config",
            "configs/ae_demo.py",
            "--workdir",
            "{tmp}/w_{name}",
            "--config.optim.gen_lr=nan",
        ],
        "config.optim.gen_lr=nan",
    ),
    "train_bad_type": (
        [
            "f3_jax.train",
            "--config",
            "configs/ae_demo.py",
            "--workdir",
            "{tmp}/w_{name}",
            "--config.train.steps=many",
        ],
        "--config.train.steps=many",
    ),
    "train_missing_data": (
        [
            "f3_jax.train",
            "--config",
            "configs/ae_demo.py",
            "--workdir",
            "{tmp}/w_{name}",
            "--config.data.path={tmp}/no_data",
            "--config.data.build_demo_if_missing=False",
        ],
        "data.path='{tmp}/no_data'",
    ),
    "train_stage2_without_stage1": (
        [
            "f3_jax.train",
            "--config",
            "configs/repr_demo.py",
            "--workdir",
            "{tmp}/w_{name}",
            "--config.autoencoder.workdir={tmp}/no_run",
        ],
        "config.autoencoder.workdir='{tmp}/no_run'",
    ),
    "train_no_workdir": (["f3_jax.train", "--config", "configs/ae_demo.py"], "--workdir"),
    "train_unknown_flag": (["f3_jax.train", "--bogus=1"], "Unknown command line flag 'bogus'"),
    "eval_no_checkpoint": (
        ["f3_jax.eval", "--config", "configs/ae_demo.py", "--workdir", "{tmp}/empty"],
        "no finalized checkpoint under",
    ),
    "eval_step_and_watch": (
        [
            "f3_jax.eval",
            "--config",
            "configs/ae_demo.py",
            "--workdir",
            "{tmp}/w_{name}",
            "--step=1",
            "--watch",
        ],
        "--step N | --watch",
    ),
    "tokenize_garbage_audio": (
        [
            "f3_jax.tokenize",
            "encode",
            "{tmp}/garbage.wav",
            "{tmp}/z.npy",
            "--workdir",
            "{tmp}/w_{name}",
        ],
        "{tmp}/garbage.wav",
    ),
    "tokenize_usage": (["f3_jax.tokenize", "encode", "--workdir", "{tmp}/w_{name}"], "usage:"),
    "generate_garbage_prompt": (
        [
            "f3_jax.generate",
            "--workdir",
            "{tmp}",
            "--prompt_audio",
            "{tmp}/garbage.wav",
            "--out",
            "{tmp}/o.wav",
        ],
        "{tmp}/garbage.wav",
    ),
    "generate_missing_workdir": (
        ["f3_jax.generate", "--workdir", "{tmp}/no_run", "--text", "hi", "--out", "{tmp}/o.wav"],
        "--workdir={tmp}/no_run",
    ),
    "generate_bad_output": (
        ["f3_jax.generate", "--workdir", "{tmp}", "--text", "hi", "--out", "{tmp}/o.mp9"],
        "--out={tmp}/o.mp9",
    ),
    "generate_no_export": (
        ["f3_jax.generate", "--workdir", "{tmp}/empty", "--text", "hi", "--out", "{tmp}/o.wav"],
        "{tmp}/empty",
    ),
    "latent_cache_no_stage1": (
        [
            "f3_jax.latent_cache",
            "--config",
            "configs/repr_demo.py",
            "--config.autoencoder.workdir={tmp}/no_run",
            "--config.data.latent_cache={tmp}/lc",
            "--config.data.path={tmp}/no_data",
        ],
        "{tmp}/no",
    ),
    "prepare_missing_input": (
        ["f3_jax.data.prepare", "--input", "{tmp}/no_audio", "--output", "{tmp}/corpus"],
        "{tmp}/no_audio",
    ),
    "prepare_output_is_a_file": (
        ["f3_jax.data.prepare", "--input", "{tmp}", "--output", "{tmp}/garbage.wav"],
        "{tmp}/garbage.wav",
    ),
    "demo_corpus_over_another_dataset": (
        ["f3_jax.data.demo_corpus", "--out", "{tmp}/other", "--num_utterances", "3"],
        "{tmp}/other",
    ),
    "llm_check_corrupt_gguf": (
        ["f3_jax.llm_check", "--weights", "{tmp}/garbage.gguf", "--prompt", "hi"],
        "{tmp}/garbage.gguf: not a readable GGUF file",
    ),
    "llm_check_missing_weights": (
        ["f3_jax.llm_check", "--weights", "{tmp}/none.gguf", "--prompt", "hi"],
        "{tmp}/none.gguf",
    ),
}


def _fixtures(tmp: Path) -> None:
    (tmp / "empty").mkdir()
    rng = np.random.default_rng(0)
    (tmp / "garbage.wav").write_bytes(rng.bytes(4000))
    (tmp / "garbage.gguf").write_bytes(rng.bytes(4000))
    clips = [{"wav": tone(0.3, 8000, rng), "id": f"c{i}"} for i in range(2)]
    write_record_dir(str(tmp / "other"), {"train": clips}, sample_rate=8000)


def _run(args: list[str], tmp: Path, name: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = env.get("XLA_FLAGS", "").split()  # one device, as a user's machine
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    argv = [a.format(tmp=tmp, name=name) for a in args]  # a workdir per case: no lock shared
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("cli_errors")
    _fixtures(tmp)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(_run, args, tmp, name) for name, (args, _) in CASES.items()}
        done = {name: f.result() for name, f in futures.items()}
    return {"tmp": tmp, **done}


@pytest.mark.parametrize("name", sorted(CASES))
def test_user_error_is_one_line_with_status_2(results, name):
    out, tmp = results[name], results["tmp"]
    says = CASES[name][1].format(tmp=tmp)
    lines = out.stderr.strip().splitlines()
    where = f"{name}: status {out.returncode}, stderr:\n{out.stderr[-3000:]}"
    assert out.returncode == 2, where
    assert 1 <= len(lines) <= 2, where
    assert "Traceback" not in out.stderr, where
    assert says in out.stderr, f"{says!r} not in: {where}"


def test_debug_shows_the_traceback(tmp_path):
    out = _run(["f3_jax.eval", "--config", "configs/ae_demo.py", "--workdir", str(tmp_path),
                "--debug"], tmp_path)  # fmt: skip
    assert out.returncode != 0 and "Traceback" in out.stderr
