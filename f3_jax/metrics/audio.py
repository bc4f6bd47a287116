"""Waveform metrics for evaluation (jax.numpy, batched, optional padding mask)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def si_sdr(
    reference: jax.Array, estimate: jax.Array, mask: jax.Array | None = None, eps: float = 1e-8
) -> jax.Array:
    """Scale-invariant SDR in dB per example (B,) (Le Roux et al. 2019).

    Both signals are made zero-mean (over the masked samples), the reference is scaled to its
    projection on the estimate, and the rest of the estimate counts as distortion.
    """
    ref, est = reference.astype(jnp.float32), estimate.astype(jnp.float32)
    if mask is None:
        mask = jnp.ones_like(ref)
    mask = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)
    ref = (ref - jnp.sum(ref * mask, -1, keepdims=True) / count) * mask
    est = (est - jnp.sum(est * mask, -1, keepdims=True) / count) * mask
    scale = jnp.sum(ref * est, -1, keepdims=True) / (jnp.sum(ref * ref, -1, keepdims=True) + eps)
    target = scale * ref
    noise = est - target
    ratio = (jnp.sum(target * target, -1) + eps) / (jnp.sum(noise * noise, -1) + eps)
    return 10.0 * jnp.log10(ratio)
