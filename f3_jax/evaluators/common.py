"""Pieces every stage's evaluator shares: the split's batches and weighted means."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from f3_jax import data, parallel


def local_batches(config, split: str, batch_size: int, max_examples: int | None) -> Iterator[dict]:
    """Deterministic numpy batches of a split (whole utterances, bucketed, padded rows invalid).

    The eval binary is one process over the local devices, so this process reads every batch.
    """
    return data.eval_batches(
        config.data,
        sample_rate=config.sample_rate,
        split=split,
        batch_size=batch_size,
        max_examples=max_examples,
    )


def device_batch(host: dict, mesh) -> dict:
    """Numeric arrays onto the mesh, split over the batch axes; strings stay on the host."""
    return parallel.global_batch(host, mesh)


@jax.jit
def _masked_sums(metrics: dict, valid: jax.Array) -> dict:
    return {k: (jnp.sum(v * w * valid), jnp.sum(w * valid)) for k, (v, w) in metrics.items()}


class WeightedMeans:
    """Weighted mean of per-example (value, weight) pairs over the real rows of many batches."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}

    def add(self, metrics: dict, valid, mesh) -> None:
        """metrics: {name: (value (B,), weight (B,))} on device; valid (B,) 1 for real rows."""
        with jax.set_mesh(mesh):
            sums = parallel.to_host(_masked_sums(metrics, valid))
        for name, (v, w) in sums.items():
            acc = self._sums.setdefault(name, [0.0, 0.0])
            acc[0] += float(v)
            acc[1] += float(w)

    def result(self) -> dict[str, float]:
        return {k: v / w if w > 0 else float("nan") for k, (v, w) in self._sums.items()}


def real_rows(local: dict) -> np.ndarray:
    """Indices of the rows of a numpy eval batch that hold an utterance (not padding)."""
    return np.flatnonzero(np.asarray(local["valid"]) > 0)


def clips(wavs: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """The real samples of the given rows of a padded (B, L) batch (padding is at the end)."""
    lengths = np.asarray(mask).astype(bool).sum(axis=-1)
    return [np.asarray(wavs[i, : lengths[i]], np.float32) for i in rows]
