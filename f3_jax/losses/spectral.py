"""Spectral reconstruction losses of stage 1: multi-scale mel and multi-resolution STFT.

Batch means of the per-example distances in f3_jax/dsp.py (DAC's formulations: Hann windows,
hop = window / 4, summed over scales), from spectra the step may have computed already.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from f3_jax.dsp import (
    MEL_BINS,
    MEL_WINDOW_SIZES,
    Spectra,
    magnitude,
    mel_distance,
    spectral_convergence,
    spectrum,
)


def multi_scale_mel_loss(
    x: jax.Array,
    y: jax.Array,
    *,
    sample_rate: int,
    window_sizes: Sequence[int] = MEL_WINDOW_SIZES,
    mel_bins: Sequence[int] = MEL_BINS,
    eps: float = 1e-5,
    spectra: tuple[Spectra, Spectra] | None = None,
) -> jax.Array:
    """Scalar mel loss: mean over the batch of `mel_distance` (x = reference, y = estimate)."""
    return jnp.mean(
        mel_distance(
            x,
            y,
            sample_rate=sample_rate,
            window_sizes=window_sizes,
            mel_bins=mel_bins,
            eps=eps,
            spectra=spectra,
        )
    )


def multi_resolution_stft_loss(
    x: jax.Array,
    y: jax.Array,
    *,
    fft_sizes: Sequence[int],
    eps: float = 1e-5,
    spectra: tuple[Spectra, Spectra] | None = None,
) -> jax.Array:
    """Sum over FFT sizes of log-magnitude L1 + spectral convergence (x = reference).

    Spectral convergence (`spectral_convergence`) is computed per example then averaged; its
    floored denominator bounds it on silent references. spectra: as in `mel_distance`.
    """
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    spec_x, spec_y = spectra or (None, None)
    total = jnp.zeros((), jnp.float32)
    for n in fft_sizes:
        mag_x = magnitude(spectrum(x, n, spec_x))
        mag_y = magnitude(spectrum(y, n, spec_y))
        log_l1 = jnp.mean(jnp.abs(jnp.log(mag_x + eps) - jnp.log(mag_y + eps)))
        sc = spectral_convergence(mag_x, mag_y, n, eps=eps)
        total = total + log_l1 + jnp.mean(sc)
    return total
