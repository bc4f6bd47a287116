"""The comparison report (`python -m f3_jax.compare`): several evaluated workdirs of one stage
side by side, curves overlaid, a run of another stage refused with a one-line error.

The workdirs' eval files are written here as `python -m f3_jax.eval` writes them (EvalStore,
the stage-1 panels); tests/test_ablate.py compares real runs end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from f3_jax.evaluation.compare import CompareError, compare, read_comparison
from f3_jax.evaluation.store import EvalStore
from f3_jax.stages.autoencoder import evaluator, panels

REPO = Path(__file__).resolve().parents[1]


def _stage1_eval(workdir: Path, mel: float, latent_std: float, step: int = 10) -> None:
    """One evaluation of a stage-1 run as the eval binary records it."""
    store = EvalStore(str(workdir))
    summary = {
        "channel_mean": np.zeros(4),
        "channel_std": np.full(4, latent_std),
        "frame_rms_mean": latent_std,
        "frame_rms_std": 0.1,
    }
    curve = mel + np.asarray(evaluator.SIGMAS) / latent_std
    scalars = {"mel_distance": mel, "generability/nmse": 0.5 * mel, "latent/std": latent_std}
    scalars |= {f"robustness/mel_sigma_{s:g}": float(v) for s, v in zip(evaluator.SIGMAS, curve)}
    store.add_metrics(step, {f"valid/{k}": v for k, v in scalars.items()})
    details = {
        "stage": "autoencoder",
        "headline": list(evaluator.HEADLINE.items()),
        "panels": [
            panels.robustness_panel(evaluator.SIGMAS, curve),
            panels.robustness_panel(evaluator.SIGMAS, curve - mel + 1.0, relative=True),
            panels.latent_panel(summary),
            panels.generability_panel(scalars, 4),
            panels.transcript_panel(["a b"], ["a"], ["b"], ["u0"]),
        ],
    }
    store.write_details("valid", step, details)
    store.mark_evaluated("valid", step)


def _stage2_eval(workdir: Path) -> None:
    store = EvalStore(str(workdir))
    store.add_metrics(5, {"valid/rq_mtp/acc_h1": 0.3})
    store.write_details("valid", 5, {"stage": "representation", "headline": [], "panels": []})
    store.mark_evaluated("valid", 5)


@pytest.fixture
def runs(tmp_path):
    a, b = tmp_path / "runs" / "f3", tmp_path / "runs" / "plain"
    _stage1_eval(a, mel=1.0, latent_std=1.0)
    _stage1_eval(b, mel=2.0, latent_std=4.0)
    return a, b


def test_both_runs_side_by_side_and_curves_overlaid(runs, tmp_path):
    out = tmp_path / "cmp"
    path = compare([str(w) for w in runs], str(out))
    text = Path(path).read_text()
    assert "| mel_distance | ↓ | **1** | 2 |" in text  # one column per run, the best in bold
    assert "f3 (step 10)" in text and "plain (step 10)" in text
    for name in ("robustness", "robustness_relative", "latent_channels"):
        figure = out / "figures" / f"{name}.png"
        assert f"](figures/{name}.png)" in text and figure.stat().st_size > 1000
    # the robustness numbers of both runs, one row each, under the overlaid figure
    assert "| f3 | 1 | 1.05 |" in text and "| plain | 2 | 2.013 |" in text
    assert "| f3 | small AR model (MLP) | 0.5 |" in text  # tables: run after run
    assert "| plain | small AR model (MLP) | 1 |" in text
    assert "transcripts" not in text  # per-utterance panels are left out
    summary = read_comparison(str(out))
    assert summary["stage"] == "autoencoder" and [r["name"] for r in summary["runs"]] == [
        "f3",
        "plain",
    ]
    assert summary["scalars"]["plain"]["latent/std"] == 4.0


def test_names_steps_and_splits(runs, tmp_path):
    a, b = runs
    _stage1_eval(a, mel=0.5, latent_std=1.0, step=20)
    out = tmp_path / "cmp"
    compare([str(a), str(b)], str(out), names=["F3", "Plain"], step=15)
    steps = {r["name"]: r["step"] for r in read_comparison(str(out))["runs"]}
    assert steps == {"F3": 10, "Plain": 10}  # the last evaluation at or before step 15
    compare([str(a), str(b)], str(out))
    assert read_comparison(str(out))["runs"][0]["step"] == 20
    with pytest.raises(CompareError, match="no evaluation of split 'test'"):
        compare([str(a), str(b)], str(out), split="test")
    with pytest.raises(CompareError, match="--names has 1 names for 2 workdirs"):
        compare([str(a), str(b)], str(out), names=["x"])


def test_a_run_of_another_stage_is_refused(runs, tmp_path):
    other = tmp_path / "runs" / "repr"
    _stage2_eval(other)
    with pytest.raises(CompareError, match=r"repr is a 'representation' run .* 'autoencoder'"):
        compare([str(runs[0]), str(other)], str(tmp_path / "cmp"))
    with pytest.raises(CompareError, match="has no evaluation"):
        compare([str(runs[0]), str(tmp_path / "nothing")], str(tmp_path / "cmp"))


def test_cli_prints_one_line_for_another_stage(runs, tmp_path):
    other = tmp_path / "runs" / "repr"
    _stage2_eval(other)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "f3_jax.compare", str(runs[0]), str(other),
           "--out", str(tmp_path / "cmp")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'representation' run" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    ok = subprocess.run([*cmd[:4], str(runs[1]), "--out", str(tmp_path / "ok")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "ok" / "comparison.json").read_text())["stage"] == "autoencoder"
