"""The train loop's validation: the trainer's eval step over data.eval_split, aggregated like
the eval binary's metrics (evaluation.aggregate), logged as one line and to TensorBoard."""

from __future__ import annotations

import jax
from absl import logging

from f3_jax import data, parallel
from f3_jax.evaluation.aggregate import WeightedMeans


def run_validation(trainer, config, state, step: int, writer) -> dict[str, float]:
    """Weighted mean of each per-example validation metric over the valid split.

    The trainer's eval_step gives (value, weight) pairs per example; its eval_samples logs
    samples of the first batch (audio, transcripts) and may add metrics of its own.
    """
    mesh = trainer.mesh
    means, extra = WeightedMeans(), {}
    batches = data.eval_batches(
        config.data,
        sample_rate=config.sample_rate,
        split=config.data.eval_split,
        batch_size=config.data.eval_batch_size // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        max_examples=config.data.eval_max_examples,
        row_multiple=parallel.local_batch_shards(mesh),
    )
    for i, local in enumerate(batches):
        host = trainer.host_batch(local) | {"valid": local["valid"]}
        batch = parallel.global_batch(host, mesh)
        metrics, outputs = trainer.eval_step(state, batch)
        means.add(metrics, batch["valid"], mesh)
        if i == 0:
            extra = trainer.eval_samples(writer, step, local, outputs, state)
    result = {f"valid/{k}": v for k, v in (means.result() | extra).items()}
    writer.scalars(step, result)
    shown = [f"valid/{k}" for k in trainer.headline_metrics if f"valid/{k}" in result]
    more = len(result) - len(shown)
    logging.info(
        "validation at step %d: %s%s",
        step,
        ", ".join(f"{k.removeprefix('valid/')}={result[k]:.4g}" for k in shown),
        f" (and {more} more metrics in TensorBoard and train/metrics.jsonl)" if more else "",
    )
    return result
