"""One aggregation of validation metrics, for the train loop's validation and the eval binary:
the weighted mean of per-example (value, weight) pairs over the real rows of many batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from f3_jax import parallel


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
