"""python -m f3_jax.eval --config configs/X.py --workdir DIR [--step N | --watch] [--split S]

Evaluates a training run's checkpoints, beside the training (another terminal, another
machine) or after it: one checkpoint (the latest, or --step), or with --watch every checkpoint
as it is finalized, each exactly once per split (WORKDIR/eval/evaluated.json), until the
config's final step (train.steps) is evaluated or no new checkpoint came for --timeout_s.

It only reads the training's files (checkpoints through evaluation/checkpoints.py: never the
data iterator, never a checkpoint still being written) and writes only under WORKDIR/eval/:
TensorBoard events, metrics.json ({step: {"<split>/<name>": value}}), details/, figures/ and
report.md. The train state is restored onto this machine's devices (one mesh axis, "data",
over all local devices), whatever mesh it was saved from. The metrics are the stage's
evaluator's (f3_jax/stages/<stage>/evaluator.py). This binary never imports train.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
from absl import flags, logging
from ml_collections import config_flags

from f3_jax import cli, parallel, stages
from f3_jax.errors import UsageError
from f3_jax.evaluation import EvalOptions, EvalResult, report
from f3_jax.evaluation.checkpoints import CheckpointReader
from f3_jax.evaluation.store import EvalStore
from f3_jax.summary import SummaryWriter

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The training run's config file (configs/*.py), with its overrides.",
    lock_config=True,
)  # fmt: skip
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
_STEP = flags.DEFINE_integer("step", None, "Evaluate this checkpoint (default: the latest).")
_WATCH = flags.DEFINE_bool("watch", False, "Evaluate every new checkpoint until the last one.")
_SPLIT = flags.DEFINE_string("split", None, "Data split (default: config.data.eval_split).")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", None, "First examples of the split (default: data.eval_max_examples; 0: all)."
)
_TIMEOUT_S = flags.DEFINE_float(
    "timeout_s", 3600.0, "--watch: stop after this many seconds without a new checkpoint."
)
_POLL_S = flags.DEFINE_float("poll_s", 30.0, "--watch: seconds between looks for checkpoints.")
_PROBE_EXAMPLES = flags.DEFINE_integer(
    "probe_examples", 256, "Stage 2: training-split examples the probes are fit on (0: no probes)."
)
_NUM_THREADS = flags.DEFINE_integer(
    "num_threads", None, "Host threads for PESQ, STOI and the recognizer (default: all CPUs)."
)


@dataclasses.dataclass
class Session:
    """Everything one eval process holds: the trainer and evaluator are built once."""

    config: object
    workdir: str
    trainer: object
    evaluator: object
    reader: CheckpointReader
    store: EvalStore
    writer: SummaryWriter
    split: str


def eval_config(config, num_devices: int):
    """A copy of the training config for this machine: the mesh is every local device on the
    data axis, and batch sizes are rounded up to a multiple of it (train.batch_size only so
    that the config checks pass: evaluation does not use it)."""
    c = config.copy_and_resolve_references()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
    round_up = lambda n: int(math.ceil(n / num_devices) * num_devices)
    c.data.eval_batch_size = round_up(c.data.eval_batch_size)
    c.train.batch_size = round_up(c.train.batch_size)
    return c


def open_session(config, workdir: str, options: dict, devices) -> Session:
    mesh = parallel.make_mesh(config.mesh, devices)
    logging.info("evaluating on mesh %s", dict(mesh.shape))
    trainer = stages.create_trainer(config, mesh)
    evaluator = stages.create_evaluator(config, trainer, EvalOptions(**options))
    store = EvalStore(workdir)
    return Session(
        config,
        workdir,
        trainer,
        evaluator,
        CheckpointReader(workdir),
        store,
        SummaryWriter(store.directory),
        options["split"],
    )


def evaluate_step(s: Session, step: int) -> dict[str, float]:
    """Restores `step`, evaluates it, and writes every output; returns its prefixed scalars."""
    start = time.perf_counter()
    state = s.reader.restore_state(step, s.trainer.abstract_state())
    restored = time.perf_counter()
    result = s.evaluator.evaluate(state, step)
    del state
    evaluated = time.perf_counter()
    scalars = {f"{s.split}/{k}": v for k, v in result.scalars.items()}
    panels = list(result.panels)
    if result.audio:
        panels.append(
            report.save_spectrograms(result.audio, result.sample_rate, s.store, s.split, step)
        )
    _write_tensorboard(s, step, result, scalars)
    s.store.add_metrics(step, scalars)
    details = {
        "stage": s.config.stage,  # the comparison report refuses runs of different stages
        "headline": list(result.headline.items()),  # a list: JSON objects lose the order
        "panels": panels,
        "seconds": {"restore": restored - start, "evaluate": evaluated - restored},
        "num_devices": len(s.trainer.mesh.devices.flat),
    }
    s.store.write_details(s.split, step, details)
    s.store.mark_evaluated(s.split, step)  # last: a kill before this evaluates the step again
    report.write_report(s.store, workdir=s.workdir, stage=s.config.stage)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in result.scalars.items() if k in result.headline)
    logging.info(
        "step %d (%s): %s | restore %.1f s, evaluate %.1f s, write %.1f s",
        step,
        s.split,
        shown,
        restored - start,
        evaluated - restored,
        time.perf_counter() - evaluated,
    )
    return scalars


def _write_tensorboard(s: Session, step: int, result: EvalResult, scalars: dict) -> None:
    hist = {f"{s.split}/{k}": v for k, v in result.histograms.items()}
    s.writer.scalars(step, scalars | hist)
    # Audio only: the spectrogram images are in the report (and in training's TensorBoard run);
    # drawing each twice costs about a second per image.
    for i, pair in enumerate(result.audio.values()):
        for kind, wav in pair.items():
            s.writer.audio(step, f"{s.split}/samples/{i}/{kind}", wav, result.sample_rate)
    for panel in result.panels:
        if panel["kind"] == "table" and panel["rows"]:
            table = report.markdown_table(panel["columns"], panel["rows"])
            s.writer.text(step, f"{s.split}/{panel['name']}", "\n".join(table))
    s.writer.flush()


def _is_final(s: Session, step: int) -> bool:
    """The run's last step: train.steps of the config, or of the checkpoint's saved config."""
    if step >= s.config.train.steps:
        return True
    try:
        return step >= int(s.reader.saved_config(step)["config"]["train"]["steps"])
    except (FileNotFoundError, KeyError, ValueError):
        return False


def watch(s: Session, timeout_s: float, poll_s: float) -> list[int]:
    """Evaluates every finalized checkpoint not yet evaluated, oldest first, until the final
    step is evaluated or `timeout_s` pass without a new checkpoint; returns the steps done."""
    done = set(s.store.evaluated(s.split))
    if any(_is_final(s, step) for step in done):
        logging.info("the final step of %s is already evaluated", s.workdir)
        return []
    evaluated: list[int] = []
    last_new = time.monotonic()
    logging.info("watching %s (%s evaluated: %s)", s.reader.directory, s.split, sorted(done))
    while True:
        for step in [t for t in s.reader.steps() if t not in done]:
            try:
                evaluate_step(s, step)
            except Exception:
                if s.reader.has_step(step):
                    raise
                # The training's keep_checkpoints deleted it after it was listed.
                logging.warning("checkpoint %d was deleted before it was evaluated", step)
                done.add(step)
                continue
            done.add(step)
            evaluated.append(step)
            last_new = time.monotonic()
            if _is_final(s, step):
                return evaluated
        if time.monotonic() - last_new > timeout_s:
            logging.warning("no new checkpoint for %.0f s; stopping", timeout_s)
            return evaluated
        time.sleep(poll_s)


def run(
    config,
    workdir: str,
    *,
    step: int | None = None,
    watch_mode: bool = False,
    split: str | None = None,
    max_examples: int | None = None,
    timeout_s: float = 3600.0,
    poll_s: float = 30.0,
    probe_examples: int = 256,
    num_threads: int | None = None,
    devices=None,
) -> list[int]:
    """The CLI without flags; returns the steps evaluated."""
    if step is not None and watch_mode:
        raise ValueError("give --step or --watch, not both")
    devices = list(devices if devices is not None else jax.local_devices())
    config = eval_config(config, len(devices))
    stages.check_config(config, len(devices))
    if not watch_mode:  # fail before building anything when there is nothing to evaluate
        reader = CheckpointReader(workdir)
        step = _pick_step(reader, step)
        reader.close()
    max_examples = config.data.eval_max_examples if max_examples is None else max_examples
    options = {
        "split": split or config.data.eval_split,
        "batch_size": config.data.eval_batch_size,
        "max_examples": max_examples if max_examples > 0 else None,
        "probe_examples": probe_examples,
        "num_threads": num_threads or os.cpu_count() or 1,
    }
    s = open_session(config, workdir, options, devices)
    try:
        if watch_mode:
            return watch(s, timeout_s, poll_s)
        evaluate_step(s, step)
        return [step]
    finally:
        s.writer.close()


def _pick_step(reader: CheckpointReader, step: int | None) -> int:
    steps = reader.steps()
    if not steps:
        raise FileNotFoundError(f"no finalized checkpoint under {reader.directory}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no finalized checkpoint {step} under {reader.directory}: {steps}")
    return step


def main(argv) -> None:
    del argv
    if _WORKDIR.value is None or _CONFIG.value is None or (_WATCH.value and _STEP.value):
        raise UsageError(
            "usage: python -m f3_jax.eval --config configs/X.py --workdir DIR [--step N | --watch]"
        )
    run(
        _CONFIG.value,
        _WORKDIR.value,
        step=_STEP.value,
        watch_mode=_WATCH.value,
        split=_SPLIT.value,
        max_examples=_MAX_EXAMPLES.value,
        timeout_s=_TIMEOUT_S.value,
        poll_s=_POLL_S.value,
        probe_examples=_PROBE_EXAMPLES.value,
        num_threads=_NUM_THREADS.value,
    )


if __name__ == "__main__":
    cli.run(main)
