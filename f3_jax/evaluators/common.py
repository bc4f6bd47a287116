"""Pieces every stage's evaluator shares: the split's batches, weighted means, progress lines."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

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


class EvalProgress:
    """Where a long evaluation is: a line when a phase starts, one at most every `every_s`
    seconds with its count, and one when it ends with the count and the time it took.

        eval step 200 (valid): probes: 64/256 training examples, 41 s
    """

    def __init__(self, step: int, split: str, every_s: float = 20.0):
        self.prefix, self.every_s = f"eval step {step} ({split})", every_s

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "examples"):
        """Yields `advance(n)`; the phase's lines say `done/total unit`."""
        started = last = time.monotonic()
        count = 0
        of = f"/{total}" if total is not None else ""
        logging.info("%s: %s: %s%s %s", self.prefix, name, 0, of, unit)

        def advance(n: int = 1) -> None:
            nonlocal count, last
            count += n
            if time.monotonic() - last >= self.every_s:
                last = time.monotonic()
                logging.info(
                    "%s: %s: %d%s %s, %.0f s", self.prefix, name, count, of, unit, last - started
                )

        yield advance
        logging.info(
            "%s: %s done: %d %s in %.1f s",
            self.prefix, name, count, unit, time.monotonic() - started,
        )  # fmt: skip


def split_size(config, split: str, max_examples: int | None) -> int:
    """How many examples an evaluation of `split` reads (its records, up to max_examples)."""
    n = data.check_eval_split(config.data, config.sample_rate, split)
    return n if max_examples is None else min(n, max_examples)
