"""One evaluator per stage; `create` picks it from config.stage.

`python -m f3_jax.eval` (f3_jax/eval.py) restores a checkpoint's train state and hands it to the
stage's evaluator, which uses the stage's trainer (built on the eval machine's mesh) for its
models and step functions. An evaluator has one method:

  evaluate(state, step) -> EvalResult

and is built as `Evaluator(config, trainer, options)`. It may cache what does not depend on the
checkpoint (the recognizer's transcripts of the original audio, the raw latents of a probe
set) between calls, since --watch evaluates many checkpoints with one evaluator.

Adding a stage: write f3_jax/evaluators/<stage>.py with an evaluator returning an EvalResult
(as flow.py does for stage 3), and add its branch to `create`. The driver, the files under
WORKDIR/eval/ and the report need no change: the report draws whatever scalars, headline
metrics and panels the result holds (see report.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from f3_jax.config import ConfigError


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


def create(config, trainer, options: EvalOptions):
    """The evaluator of config.stage, on the trainer's mesh."""
    if config.stage == "autoencoder":
        from f3_jax.evaluators.autoencoder import AutoencoderEvaluator

        return AutoencoderEvaluator(config, trainer, options)
    if config.stage == "representation":
        from f3_jax.evaluators.representation import RepresentationEvaluator

        return RepresentationEvaluator(config, trainer, options)
    if config.stage == "flow":
        from f3_jax.evaluators.flow import FlowEvaluator

        return FlowEvaluator(config, trainer, options)
    raise ConfigError(
        f"config.stage={config.stage!r} has no evaluator: add f3_jax/evaluators/"
        f"{config.stage}.py and its branch in f3_jax.evaluators.create"
    )
