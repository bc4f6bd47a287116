"""The batches an evaluation reads: a split's deterministic eval batches, on the devices, and
their real (not padding) rows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from jax.sharding import Mesh

from f3_jax import data, parallel


def local_batches(
    config, split: str, batch_size: int, max_examples: int | None, mesh: Mesh
) -> Iterator[dict]:
    """Deterministic numpy batches of a split (whole utterances, bucketed, padded rows invalid;
    a split smaller than a batch gets fewer rows, a multiple of the mesh's batch shards).

    The eval binary is one process over the local devices, so this process reads every batch.
    """
    return data.eval_batches(
        config.data,
        sample_rate=config.sample_rate,
        split=split,
        batch_size=batch_size,
        max_examples=max_examples,
        row_multiple=parallel.local_batch_shards(mesh),
    )


def device_batch(host: dict, mesh) -> dict:
    """Numeric arrays onto the mesh, split over the batch axes; strings stay on the host."""
    return parallel.global_batch(host, mesh)


def real_rows(local: dict) -> np.ndarray:
    """Indices of the rows of a numpy eval batch that hold an utterance (not padding)."""
    return np.flatnonzero(np.asarray(local["valid"]) > 0)


def clips(wavs: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """The real samples of the given rows of a padded (B, L) batch (padding is at the end)."""
    lengths = np.asarray(mask).astype(bool).sum(axis=-1)
    return [np.asarray(wavs[i, : lengths[i]], np.float32) for i in rows]


def split_size(config, split: str, max_examples: int | None) -> int:
    """How many examples an evaluation of `split` reads (its records, up to max_examples)."""
    n = data.check_eval_split(config.data, config.sample_rate, split)
    return n if max_examples is None else min(n, max_examples)
