"""Per-example multi-resolution STFT distance with a padding mask (jax.numpy, batched).

The validation counterpart of `losses.spectral.multi_resolution_stft_loss`: the same terms
(log-magnitude L1 + spectral convergence, summed over FFT sizes, hop = size / 4), but one value
per example, and frames centered on padding left out. Without a mask, the batch mean of this
distance equals the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from f3_jax.dsp import frame_mask, magnitude, spectral_convergence, stft

STFT_FFT_SIZES = (2048, 1024, 512, 256)


def stft_distance(
    x: jax.Array,
    y: jax.Array,
    *,
    fft_sizes: Sequence[int] = STFT_FFT_SIZES,
    mask: jax.Array | None = None,
    eps: float = 1e-5,
) -> jax.Array:
    """(B,) sum over FFT sizes of mean |log |X| - log |Y|| + ||Y| - |X||_F / ||X||_F (its
    denominator floored on silent references, as in the loss: `spectral_convergence`).

    x = reference, y = estimate, both (B, L); mask (B, L), 1 = real audio, 0 = padding.
    """
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    if mask is None:
        mask = jnp.ones_like(x)
    mask = mask.astype(jnp.float32)
    x, y = x * mask, y * mask
    total = jnp.zeros((x.shape[0],), jnp.float32)
    for n in fft_sizes:
        mag_x, mag_y = magnitude(stft(x, n, n // 4)), magnitude(stft(y, n, n // 4))
        fm = frame_mask(mask, n // 4, mag_x.shape[1], centered=True)[:, :, None]  # (B, frames, 1)
        cells = jnp.maximum(jnp.sum(fm, axis=(1, 2)) * mag_x.shape[2], 1.0)
        log_diff = jnp.abs(jnp.log(mag_x + eps) - jnp.log(mag_y + eps))
        log_l1 = jnp.sum(log_diff * fm, axis=(1, 2)) / cells
        total = total + log_l1 + spectral_convergence(mag_x, mag_y, n, eps=eps, frame_mask=fm)
    return total
