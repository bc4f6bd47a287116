"""The progress line: rates on step time only, and an ETA that counts the phases and the
validations ahead (f3_jax/progress.py), on a fake clock; and on a real tiny run."""

from __future__ import annotations

import json

import pytest

from f3_jax import progress as progress_lib
from f3_jax.progress import CompileClock, Progress
from tests.cli_runs import run_cli, tail


class FakeClock:
    def __init__(self, monkeypatch):
        self.now = 1000.0
        monkeypatch.setattr(progress_lib.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(CompileClock, "_total", 0.0)

    def run(self, seconds: float, compiling: float = 0.0) -> None:
        self.now += seconds + compiling
        CompileClock._total += compiling


def test_rate_leaves_out_compilation_validation_and_checkpoints(monkeypatch):
    clock = FakeClock(monkeypatch)
    p = Progress(100, 2.0, 0, eval_every=50, checkpoint_every=50)
    clock.run(0.5, compiling=60.0)  # step 1: compiles the train step
    assert "perf/steps_per_second" not in p.report(1, {})  # all compilation: no rate yet
    clock.run(0.5 * 9)
    with p.paused("validation"):
        clock.run(5.0, compiling=20.0)  # the first validation compiles the eval step
    with p.paused("checkpoint"):
        clock.run(1.0)
    perf = p.report(10, {})
    assert perf["perf/steps_per_second"] == pytest.approx(2.0)
    assert perf["perf/audio_seconds_per_second"] == pytest.approx(4.0)
    # 90 steps at 2/s, one validation (5 s: its compilation is done) and one checkpoint
    # (1 s) more at step 100 (step 50's are counted as well).
    assert p.eta(10)[0] == pytest.approx(45.0 + 2 * 5.0 + 2 * 1.0)


def test_eta_counts_a_slower_phase_and_its_compilation_before_it_starts(monkeypatch):
    clock = FakeClock(monkeypatch)
    p = Progress(100, 1.0, 0, phases=[(0, 1.0), (50, 3.0)])
    clock.run(0.1, compiling=10.0)
    p.report(1, {})
    clock.run(0.1 * 9)
    p.report(10, {})
    seconds, partial = p.eta(10)
    # 40 steps at 10/s, 50 at 10/3 per s, and the second phase's compilation: 3 x 10 s.
    assert seconds == pytest.approx(4.0 + 15.0 + 30.0)
    assert not partial
    clock.run(0.3 * 40, compiling=25.0)  # the phase starts, compiles, runs at 1/0.3 s
    p.report(51, {})
    clock.run(0.3 * 9)
    p.report(60, {})
    assert p.eta(60)[0] == pytest.approx(40 * 0.3)


def test_validation_cost_is_flagged_until_measured(monkeypatch):
    clock = FakeClock(monkeypatch)
    p = Progress(10, 1.0, 0, eval_every=5)
    clock.run(1.0)
    p.report(1, {})
    clock.run(1.0)
    p.report(2, {})
    assert p.eta(2) == (pytest.approx(8.0), True)


def test_eta_of_a_real_run_is_close_to_the_time_it_took(cli_setup, cli_reference, tmp_path):
    """The tiny config (its programs compiled by the reference run), 12 steps: the ETA logged
    at step 2 against the time the run took from there to its last step."""
    workdir = tmp_path / "eta"
    code, log = run_cli(
        cli_setup, workdir, "--config.train.steps=12", "--config.train.eval_every=12",
        "--config.train.checkpoint_every=12",
    )  # fmt: skip
    assert code == 0, tail(log)
    lines = (workdir / "train" / "metrics.jsonl").read_text().splitlines()
    by_step = {r["step"]: r for r in map(json.loads, lines) if "perf/eta_seconds" in r}
    eta = by_step[2]["perf/eta_seconds"]
    took = by_step[12]["wall_time"] - by_step[2]["wall_time"]
    assert took / 3 <= eta <= took * 3, (eta, took)
    assert "step 12/12 |" in log
