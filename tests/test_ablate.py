"""The ablation runner (`python -m f3_jax.ablate`): variants parsed, the plan of commands, user
errors in one line, and (slow) two variants of a tiny config trained, evaluated and compared
end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from f3_jax import ablate
from f3_jax.data.synthetic import tone, write_record_dir
from f3_jax.errors import UsageError

REPO = Path(__file__).resolve().parents[1]

CONFIG_TEMPLATE = '''
"""Tiny stage-1 config for the ablation runner's test (written by tests/test_ablate.py)."""

from tests.ae_fixtures import tiny_ae_config


def get_config():
    c = tiny_ae_config()
    c.data.path = {data_path!r}
    c.data.eval_batch_size = 4
    c.data.eval_max_seconds = 0.5
    c.data.eval_bucket_seconds = (0.5,)
    c.train.log_every = 1
    c.generability.steps = 20
    c.generability.patch_frames = 2
    c.generability.context_patches = 2
    return c
'''


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_variants_parse():
    v = ablate.parse_variant("vae:bottleneck.kind=vae, loss.kl_weight=1e-3")
    assert v.name == "vae"
    assert v.overrides == (("bottleneck.kind", "vae"), ("loss.kl_weight", "1e-3"))
    assert ablate.parse_variant("f3:").overrides == ()
    assert ablate.parse_variant("x:config.rq_mtp.horizons=2").overrides == (
        ("rq_mtp.horizons", "2"),
    )
    for bad in ("novariant", "a b:x=1", "v:bottleneck.kind", "v:=3"):
        with pytest.raises(UsageError, match="--variant"):
            ablate.parse_variant(bad)


def test_plan_trains_and_evaluates_each_variant_then_compares(tmp_path):
    out = str(tmp_path / "abl")
    variants = [ablate.parse_variant(t) for t in ("f3:", "plain:bottleneck.kind=plain")]
    common = [("data.eval_max_examples", "8")]
    cmds = ablate.plan("configs/ae_demo.py", variants, 300, out, common, eval_max_examples=4)
    assert [c[2] for c in cmds] == ["f3_jax.train", "f3_jax.eval"] * 2 + ["f3_jax.compare"]
    train_plain = cmds[2]
    assert train_plain[3:7] == ["--config", "configs/ae_demo.py", "--workdir", f"{out}/plain"]
    assert train_plain[7:] == [
        "--config.bottleneck.kind=plain",
        "--config.data.eval_max_examples=8",
        "--config.train.steps=300",
    ]
    assert cmds[3][-1] == "--max_examples=4" and cmds[3][7:-1] == train_plain[7:]
    assert cmds[-1][3:] == [f"{out}/f3", f"{out}/plain", "--out", f"{out}/report",
                            "--names", "f3,plain"]  # fmt: skip
    with pytest.raises(UsageError, match="different names"):
        ablate.plan("c.py", variants[:1] * 2, 3, out)
    path = ablate.write_commands(out, cmds)
    assert Path(path).read_text().count("python") >= 5


def test_print_only_and_one_line_errors(tmp_path):
    base = [sys.executable, "-m", "f3_jax.ablate", "--config", "configs/ae_demo.py",
            "--steps", "5", "--out", str(tmp_path / "abl")]  # fmt: skip
    run = lambda *a: subprocess.run(
        [*base, *a], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120
    )
    ok = run("--variant", "a:", "--variant", "b:bottleneck.kind=vae", "--print_only")
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 5 and "--config.bottleneck.kind=vae" in ok.stdout
    assert (tmp_path / "abl" / "commands.sh").exists()
    bad = run("--variant", "a:", "--variant", "b:bottleneck.kind")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "KEY=VALUE" in bad.stderr


@pytest.mark.slow  # two tiny trainings and evaluations in subprocesses: minutes on 2 cores
def test_two_variants_of_a_tiny_config_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    utts = lambda n, s: [
        {"wav": tone(rng.uniform(0.3, 0.5), 8000, rng), "id": f"{s}{i}", "text": "one two"}
        for i in range(n)
    ]
    data = tmp_path / "data"
    write_record_dir(str(data), {"train": utts(8, "t"), "valid": utts(4, "v")}, sample_rate=8000)
    config = tmp_path / "tiny_ablate_config.py"
    config.write_text(CONFIG_TEMPLATE.format(data_path=str(data)))
    out = tmp_path / "abl"
    variants = ["--variant", "f3:", "--variant", "plain:bottleneck.kind=plain"]
    cmd = [sys.executable, "-m", "f3_jax.ablate", "--config", str(config), "--steps", "2",
           "--out", str(out), *variants]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "report" / "comparison.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["f3", "plain"]
    assert all(r["step"] == 2 for r in summary["runs"])
    report = (out / "report" / "report.md").read_text()
    assert "f3 (step 2)" in report and "plain (step 2)" in report
    assert (out / "report" / "figures" / "robustness_relative.png").stat().st_size > 1000
    for name in ("f3", "plain"):
        assert summary["scalars"][name]["generability/num_test"] > 0
