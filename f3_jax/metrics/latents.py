"""Latent statistics: per-channel mean and std, per-frame RMS, over the real frames of a split.

The normalized bottleneck promises unit-scale latents (each frame zero mean, unit RMS over
channels with `bottleneck.norm = "layer"`); these statistics show whether a checkpoint keeps
that promise per channel (a dead channel has std ~0, a drifting one a large mean). Sums are
taken on device per batch (`latent_sums`) and accumulated on the host in float64
(`LatentStats`), so a split of any size costs one small transfer per batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def latent_sums(z: jax.Array, fmask: jax.Array) -> dict[str, jax.Array]:
    """Sums over the real frames of z (B, T, D): count, sum and sum of squares per channel,
    and sum and sum of squares of the per-frame RMS."""
    z = z.astype(jnp.float32)
    m = fmask.astype(jnp.float32)[..., None]
    rms = jnp.sqrt(jnp.mean(jnp.square(z), axis=-1))  # (B, T)
    return {
        "count": jnp.sum(fmask),
        "sum": jnp.sum(z * m, axis=(0, 1)),
        "sumsq": jnp.sum(jnp.square(z) * m, axis=(0, 1)),
        "rms_sum": jnp.sum(rms * fmask),
        "rms_sumsq": jnp.sum(jnp.square(rms) * fmask),
    }


class LatentStats:
    """Accumulates `latent_sums` of many batches; `summary` gives the statistics."""

    def __init__(self) -> None:
        self._totals: dict[str, np.ndarray] = {}

    def add(self, sums: dict) -> None:
        for key, value in sums.items():
            value = np.asarray(value, dtype=np.float64)
            self._totals[key] = self._totals.get(key, 0.0) + value

    def summary(self) -> dict[str, np.ndarray | float]:
        """channel_mean (D,), channel_std (D,), frame_rms_mean, frame_rms_std, num_frames."""
        t = self._totals
        n = max(float(t.get("count", 0.0)), 1.0)
        mean = t["sum"] / n
        var = np.maximum(t["sumsq"] / n - np.square(mean), 0.0)
        rms_mean = float(t["rms_sum"] / n)
        rms_var = max(float(t["rms_sumsq"] / n) - rms_mean**2, 0.0)
        return {
            "channel_mean": mean,
            "channel_std": np.sqrt(var),
            "frame_rms_mean": rms_mean,
            "frame_rms_std": float(np.sqrt(rms_var)),
            "num_frames": float(t.get("count", 0.0)),
        }
