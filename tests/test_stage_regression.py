"""Refactorings change nothing: every stage's short fixed-seed run equals its recording, bit for
bit, and checkpoints and exports written by earlier code still restore and generate.

The workdirs (tests/golden/legacy/) were written by `python -m tests.regression_runs` before the
stages moved into f3_jax/stages/ (issue #16), with the digests of what they hold under "legacy"
in tests/golden/stages.json. The records beside them were re-recorded with `--records_only` when
Snake's sine became a polynomial on CPU (issue #18: results moved by float rounding, 5e-7
relative on the first losses); the redesign itself had matched the earlier records bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from f3_jax import checkpoint, stages
from tests import regression_runs as rr
from tests.cli_runs import REPO
from tests.repr_fixtures import tiny_repr_config, write_frozen_models

GOLDEN = json.loads((rr.GOLDEN / "stages.json").read_text())
LEGACY = rr.GOLDEN / "legacy"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The records of today's code, made as golden/ was: a subprocess with one CPU device."""
    root = tmp_path_factory.mktemp("regression")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    out = root / "records.json"
    subprocess.run(
        [sys.executable, "-m", "tests.regression_runs", "--out", str(out)],
        cwd=REPO, env=env, check=True, timeout=1200,
    )  # fmt: skip
    return json.loads(out.read_text()), str(root)


def _same(got, want, exact: bool) -> bool:
    """Float hex strings equal (exact), or within float32 rounding of a few steps' drift."""
    if exact or got == want:
        return got == want
    a, b = float.fromhex(got), float.fromhex(want)
    return abs(a - b) <= 1e-4 * max(abs(a), abs(b), 1e-3)


@pytest.mark.parametrize("stage", ["autoencoder", "representation", "flow"])
def test_short_run_equals_its_recording(runs, stage):
    """Bit for bit on the machine the recording was made on (jax version and CPU vector
    extensions), else within float32 drift: XLA:CPU kernels differ across CPUs."""
    records = runs[0]
    exact = records["machine"] == GOLDEN["machine"]
    got, want = dict(records[stage]), dict(GOLDEN[stage])
    for part in ("losses", "eval"):
        flat_got, flat_want = _flatten(got[part]), _flatten(want[part])
        assert flat_got.keys() == flat_want.keys(), part
        bad = {
            k: (flat_got[k], flat_want[k])
            for k in flat_want
            if not _same(flat_got[k], flat_want[k], exact)
        }
        assert not bad, (part, bad)
    if exact:
        for key in ("params", "disc_params", "generation"):
            assert got.get(key) == want.get(key), key


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in tree.items():
        out |= _flatten(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v}
    return out


def _config_for(stage: str, root: str):
    if stage == "autoencoder":
        return rr.stage1_config()
    if stage == "representation":
        return tiny_repr_config(root)
    return rr.stage3_config(root, str(LEGACY / "representation"))


@pytest.mark.parametrize("stage", ["autoencoder", "representation", "flow"])
def test_legacy_checkpoint_restores_strictly(runs, stage):
    config = _config_for(stage, runs[1])
    trainer = stages.create_trainer(config, rr.mesh_of_one())
    ckpt = checkpoint.Checkpointer(str(LEGACY / stage), async_save=False)
    try:
        state = ckpt.restore(rr.STEPS, trainer.abstract_state())
    finally:
        ckpt.close()
    trained = state["gen"]["params"] if stage == "autoencoder" else state["params"]
    assert rr.digest(trained) == GOLDEN["legacy"][stage]["params"]


def test_legacy_exports_encode_represent_and_generate(runs):
    from f3_jax.inference.generator import Generator
    from f3_jax.inference.tokenizer import Tokenizer

    wav = np.sin(np.linspace(0, 200, 8000)).astype(np.float32)
    z = Tokenizer.from_checkpoint(str(LEGACY / "autoencoder")).encode(wav)
    assert z.shape[1] == 8 and np.isfinite(z).all()
    r = Tokenizer.from_checkpoint(str(LEGACY / "representation")).represent(wav)
    assert r.shape[0] == z.shape[0] and np.isfinite(r).all()
    _, llm_dir = write_frozen_models(runs[1])
    gen, params = Generator.from_workdir(str(LEGACY / "flow"), llm_path=llm_dir)
    out = gen.generate(jax.device_get(params), "the cat", seed=0, max_patches=3)
    assert out["latents"].shape[1] == 8 and np.isfinite(out["latents"]).all()
    if rr.machine() == GOLDEN["machine"]:  # else XLA:CPU kernels may round differently
        want = GOLDEN["legacy"]["flow"]["generation"]
        assert rr.digest({"latents": np.asarray(out["latents"])}) == want
