"""Failures after a step never lose it; a broken checkpoint, a busy workdir, a missing eval split.

Real `python -m f3_jax.train` subprocesses on the tiny config of tests/cli_runs.py (one process
of two devices, the shared compilation cache). Faults are injected by a launcher script that
patches one function of the train loop, then runs the real CLI: nothing in f3_jax knows about
the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from f3_jax.workdir_lock import LOCK_NAME
from tests.cli_runs import (
    N,
    checkpoint_steps,
    complete_checkpoint,
    finish,
    run_cli,
    start,
    tail,
    wait_for,
)

# Patches one piece of the train loop to raise at step FAIL_STEP (not a checkpoint step:
# N // 2 and N are), then runs the CLI as `python -m f3_jax.train` would.
LAUNCHER = """
import sys
from absl import app
from f3_jax import summary, train
from f3_jax.stages.autoencoder.trainer import AutoencoderTrainer

FAIL_STEP, WHERE = {fail_step}, {where!r}


def failing(original, step_arg):
    def wrapper(*args, **kwargs):
        if args[step_arg] == FAIL_STEP:
            raise RuntimeError(f"injected failure in {{WHERE}} at step {{FAIL_STEP}}")
        return original(*args, **kwargs)
    return wrapper


if WHERE == "validation":
    train.run_validation = failing(train.run_validation, 3)
elif WHERE == "summary_writer":
    summary.SummaryWriter.scalars = failing(summary.SummaryWriter.scalars, 1)
elif WHERE == "sample_logging":
    AutoencoderTrainer.eval_samples = failing(AutoencoderTrainer.eval_samples, 2)
app.run(train.main)
"""
FAIL_STEP = 4  # train.eval_every = 4 in the tiny config; checkpoints at N // 2 = 3 and N = 6


@pytest.mark.parametrize("where", ["validation", "summary_writer", "sample_logging"])
def test_a_failure_after_a_step_saves_that_step(cli_setup, cli_reference, tmp_path, where):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(fail_step=FAIL_STEP, where=where))
    workdir = tmp_path / "run"
    code, log = run_cli(cli_setup, workdir, launcher=launcher)
    assert code != 0, tail(log)
    assert f"injected failure in {where}" in log
    # Checkpoint N // 2 was due before; step FAIL_STEP was saved on the way out.
    assert checkpoint_steps(workdir) == [N // 2, FAIL_STEP], tail(log)
    assert complete_checkpoint(workdir, FAIL_STEP)
    assert "saving a checkpoint of it first" in log
    assert not (workdir / LOCK_NAME).exists(), "the lock must be released on the way out"
    code, log = run_cli(cli_setup, workdir, name="resume")
    assert code == 0, tail(log)
    assert f"checkpoints/{FAIL_STEP}" in log  # resumed from the rescued step


def test_missing_eval_split_stops_before_compute(cli_setup, tmp_path):
    workdir = tmp_path / "run"
    started = time.monotonic()
    code, log = run_cli(cli_setup, workdir, "--config.data.eval_split=heldout")
    assert code == 2, tail(log)
    assert "data.eval_split='heldout'" in log and "has no split 'heldout'" in log
    assert not (workdir / "checkpoints").exists()
    assert "Traceback" not in log
    assert time.monotonic() - started < 60, "it compiled something first"


def _corrupt(workdir: Path, step: int, how: str) -> str:
    """Breaks checkpoint `step` of `workdir`; returns the file's name."""
    state = workdir / "checkpoints" / str(step) / "state"
    if how == "metadata":
        (state / "_METADATA").unlink()
        return "_METADATA"
    data_files = sorted((state / "d").iterdir(), key=lambda p: p.stat().st_size)
    target = data_files[-1]  # the largest: it holds the arrays
    if how == "truncate":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size // 2)
    else:
        target.unlink()
    return target.name


@pytest.fixture
def finished_copy(cli_reference, tmp_path) -> Path:
    """A copy of the reference workdir (checkpoints N // 2 and N) with no lock left in it."""
    workdir = tmp_path / "copy"
    shutil.copytree(cli_reference[0], workdir)
    return workdir


@pytest.mark.parametrize("how", ["truncate", "delete", "metadata"])
def test_unreadable_latest_checkpoint_resumes_from_the_previous(cli_setup, finished_copy, how):
    name = _corrupt(finished_copy, N, how)
    code, log = run_cli(cli_setup, finished_copy, f"--config.train.steps={N + 1}")
    assert code == 0, tail(log)
    warnings = [line for line in log.splitlines() if f"checkpoint step {N} is unreadable" in line]
    assert len(warnings) == 1, tail(log, 80)
    assert name in warnings[0], warnings[0]
    assert f"checkpoints/{N // 2}" in log  # resumed from the previous step
    assert checkpoint_steps(finished_copy) == [N // 2, N, N + 1]  # N trained and saved anew
    aside = list((finished_copy / "checkpoints_unreadable").iterdir())
    assert [p.name.split("-")[0] for p in aside] == [str(N)]
    assert "Traceback" not in log and len(log.splitlines()) < 200


def test_unreadable_latest_checkpoint_without_fallback_is_an_error(cli_setup, finished_copy):
    _corrupt(finished_copy, N, "truncate")
    code, log = run_cli(
        cli_setup, finished_copy, f"--config.train.steps={N + 1}",
        "--config.train.restore_fallback=False",
    )  # fmt: skip
    assert code == 2, tail(log)
    assert f"checkpoint step {N} is unreadable" in log
    assert checkpoint_steps(finished_copy) == [N // 2, N]  # nothing moved, nothing trained


def test_resume_logs_the_changed_config_fields(cli_setup, finished_copy):
    code, log = run_cli(
        cli_setup, finished_copy, f"--config.train.steps={N + 1}", "--config.seed=7",
        "--config.optim.gen_lr=0.002",
    )  # fmt: skip
    assert code == 0, tail(log)
    line = next(x for x in log.splitlines() if "resuming with a changed config" in x)
    assert "seed: 0 -> 7" in line and "optim.gen_lr:" in line and "-> 0.002" in line
    assert "train.steps: 6 -> 7" in line


def test_a_second_trainer_on_a_busy_workdir_stops_naming_the_holder(cli_setup, tmp_path):
    workdir = tmp_path / "busy"
    first = start(cli_setup, workdir, "first")
    wait_for(first, "the lock", lambda: (workdir / LOCK_NAME).exists())
    code, log = run_cli(cli_setup, workdir, name="second")
    holder = json.loads((workdir / LOCK_NAME).read_text())
    assert code == 2, tail(log)
    assert f"pid {first.pid}" in log and "in use by another training" in log
    assert holder["pid"] == first.pid
    run = finish(first)
    assert run.returncode == 0, tail(run.log)
    assert checkpoint_steps(workdir)[-1] == N
    assert not (workdir / LOCK_NAME).exists()


def test_the_lock_of_a_dead_run_is_taken_over(cli_setup, finished_copy):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = {"host": os.uname().nodename, "pid": dead.pid, "started": 0, "refreshed": 0}
    (finished_copy / LOCK_NAME).write_text(json.dumps(lock))
    code, log = run_cli(cli_setup, finished_copy, f"--config.train.steps={N + 1}")
    assert code == 0, tail(log)
    assert "took over the lock" in log and f"process {dead.pid} is not running" in log
