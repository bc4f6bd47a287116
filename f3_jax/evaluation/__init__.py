"""Evaluation: what an evaluator returns, and the pieces the train loop's validation and the
eval binary share (batches, aggregation, progress lines, the store, the report).

Each stage's evaluator lives in its folder (f3_jax/stages/<stage>/evaluator.py) and is built as
`Evaluator(config, trainer, options)` with one method, `evaluate(state, step) -> EvalResult`.
It may cache what does not depend on the checkpoint (the recognizer's transcripts of the
original audio, the raw latents of a probe set), since --watch evaluates many checkpoints with
one evaluator. The eval binary, the files under WORKDIR/eval/ and the report need no change for
a new stage: the report draws whatever scalars, headline metrics and panels the result holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class EvalOptions:
    """What the eval CLI passes to every evaluator."""

    split: str  # the data split evaluated
    batch_size: int  # global eval batch (a multiple of the eval mesh's data axes)
    max_examples: int | None  # first examples of the split; None = all
    probe_examples: int = 256  # training-split examples the probes are fit on (0: no probes)
    probe_bins: int = 4  # quantile classes of a continuous probe label
    num_threads: int = 2  # host threads for PESQ, STOI and the recognizer


@dataclasses.dataclass
class EvalResult:
    """One checkpoint's evaluation on one split.

    scalars: metric name -> value (the driver prefixes the split: "valid/mel_distance");
    headline: metric name -> "lower" or "higher" (which way is better): the metrics the report
      tabulates first and plots against the step;
    panels: report panels of this step (JSON; kinds in report.py);
    histograms: name -> array, TensorBoard only (e.g. per-channel latent means);
    audio: example name -> {label: wav} ({"original", "reconstruction"} for stage 1,
      {"original", "generated"} for stage 3), for TensorBoard audio and the report's
      spectrograms, titled by the labels; sample_rate is theirs.
    """

    scalars: dict[str, float]
    headline: dict[str, str] = dataclasses.field(default_factory=dict)
    panels: list[dict] = dataclasses.field(default_factory=list)
    histograms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    audio: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    sample_rate: int = 0
