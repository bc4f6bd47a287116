"""Stage-1 discriminators: multi-period (HiFi-GAN) and multi-band multi-resolution STFT (DAC).

Each sub-discriminator returns (logits, feature_maps); `Discriminators` concatenates the lists
of the enabled families, so losses iterate over one flat list. Feature maps are the activations
after each hidden layer (the logits are not repeated among them).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from f3_jax.dsp import affine_stft, stft
from f3_jax.models.layers import WNConv2d

Dtype = jnp.dtype | str
SubOutput = tuple[jax.Array, list[jax.Array]]
_SLOPE = 0.1  # LeakyReLU slope of HiFi-GAN and DAC


class PeriodDiscriminator(nn.Module):
    """2-D convolutions over (length / period, period): kernels (k, 1) never mix the columns."""

    period: int
    channels: int = 32
    max_channels: int = 1024
    num_layers: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wav: jax.Array) -> SubOutput:
        b, length = wav.shape
        pad = (-length) % self.period
        if pad:
            wav = jnp.pad(wav, ((0, 0), (0, pad)), mode="reflect" if length > pad else "constant")
        x = wav.reshape(b, -1, self.period, 1)
        feats = []
        for i in range(self.num_layers):
            width = min(self.channels * 4**i, self.max_channels)
            x = WNConv2d(width, (5, 1), (3, 1), ((2, 2), (0, 0)), dtype=self.dtype)(x)
            x = nn.leaky_relu(x, _SLOPE)
            feats.append(x)
        x = WNConv2d(self.max_channels, (5, 1), (1, 1), ((2, 2), (0, 0)), dtype=self.dtype)(x)
        x = nn.leaky_relu(x, _SLOPE)
        feats.append(x)
        logits = WNConv2d(1, (3, 1), (1, 1), ((1, 1), (0, 0)), dtype=self.dtype)(x)
        return logits, feats


class MultiPeriodDiscriminator(nn.Module):
    periods: Sequence[int] = (2, 3, 5, 7, 11)
    channels: int = 32
    max_channels: int = 1024
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wav: jax.Array) -> list[SubOutput]:
        return [
            PeriodDiscriminator(
                p, self.channels, self.max_channels, dtype=self.dtype, name=f"period_{p}"
            )(wav)
            for p in self.periods
        ]


def _band_edges(bins: int, bands: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    return [(int(lo * bins), int(hi * bins)) for lo, hi in bands]


class STFTDiscriminator(nn.Module):
    """One FFT size: complex STFT as (real, imag) channels, a conv stack per frequency band,
    bands concatenated along frequency, then one output convolution."""

    fft_size: int
    bands: Sequence[Sequence[float]]
    channels: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wav: jax.Array, spec: jax.Array | None = None) -> SubOutput:
        """spec: stft(wav, fft_size, fft_size // 4) when already computed."""
        if spec is None:
            spec = stft(wav, self.fft_size, self.fft_size // 4)  # (B, frames, bins)
        x = jnp.stack([spec.real, spec.imag], axis=-1)  # NHWC with H = time, W = frequency
        feats, outs = [], []
        for band_index, (lo, hi) in enumerate(_band_edges(x.shape[2], self.bands)):
            h = x[:, :, lo:hi]
            for layer in range(5):
                conv = self._band_conv(layer, f"band{band_index}_conv{layer}")
                h = nn.leaky_relu(conv(h), _SLOPE)
                if layer > 0:  # the first layer only maps (real, imag) to channels
                    feats.append(h)
            outs.append(h)
        x = jnp.concatenate(outs, axis=2)
        logits = WNConv2d(1, (3, 3), dtype=self.dtype, name="out")(x)
        return logits, feats

    def _band_conv(self, layer: int, name: str) -> WNConv2d:
        if layer == 0:
            return WNConv2d(self.channels, (3, 9), dtype=self.dtype, name=name)
        if layer < 4:  # downsample frequency by 2
            return WNConv2d(
                self.channels, (3, 9), (1, 2), ((1, 1), (4, 4)), dtype=self.dtype, name=name
            )
        return WNConv2d(self.channels, (3, 3), dtype=self.dtype, name=name)


# Fractions of the Nyquist band each STFT sub-band covers (DAC's split).
DEFAULT_BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


class MultiBandSTFTDiscriminator(nn.Module):
    fft_sizes: Sequence[int] = (2048, 1024, 512)
    bands: Sequence[Sequence[float]] = DEFAULT_BANDS
    channels: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wav: jax.Array, spectra: dict | None = None) -> list[SubOutput]:
        """spectra: {fft size: STFT of wav} for the sizes already computed."""
        bands = tuple(tuple(b) for b in self.bands)
        spectra = spectra or {}
        return [
            STFTDiscriminator(n, bands, self.channels, dtype=self.dtype, name=f"stft_{n}")(
                wav, spectra.get(n)
            )
            for n in self.fft_sizes
        ]


class Discriminators(nn.Module):
    use_mpd: bool = True
    periods: Sequence[int] = (2, 3, 5, 7, 11)
    mpd_channels: int = 32
    mpd_max_channels: int = 1024
    use_mbstft: bool = True
    fft_sizes: Sequence[int] = (2048, 1024, 512)
    bands: Sequence[Sequence[float]] = DEFAULT_BANDS
    stft_channels: int = 32
    dtype: Dtype = jnp.float32

    @classmethod
    def from_config(cls, config) -> Discriminators:
        """config: the full stage-1 config (uses discriminator and compute_dtype)."""
        d = config.discriminator
        return cls(
            use_mpd=bool(d.use_mpd),
            periods=tuple(d.mpd_periods),
            mpd_channels=int(d.mpd_channels),
            mpd_max_channels=int(d.mpd_max_channels),
            use_mbstft=bool(d.use_mbstft),
            fft_sizes=tuple(d.stft_fft_sizes),
            bands=tuple(tuple(b) for b in d.stft_bands),
            stft_channels=int(d.stft_channels),
            dtype=jnp.dtype(config.compute_dtype),
        )

    def stft_sizes(self) -> tuple[int, ...]:
        """FFT sizes whose spectra (hop size // 4) the STFT discriminators read."""
        return tuple(self.fft_sizes) if self.use_mbstft else ()

    @nn.compact
    def __call__(self, wav: jax.Array, spectra: dict | None = None) -> list[SubOutput]:
        """(B, L) -> [(logits, feature_maps)] for each enabled sub-discriminator.

        spectra: {n: stft(wav, n, n // 4)} of the raw (not level-normalized) wav, shared with
        the spectral losses (`spectral.stfts`); the STFT discriminators then take the spectra of
        the normalized wav from them by linearity instead of computing new FFTs.
        """
        # DAC normalizes the level per example: the discriminators judge content, not gain.
        wav = wav.astype(jnp.float32)
        mean = jnp.mean(wav, axis=-1)
        gain = 0.8 / (jnp.max(jnp.abs(wav - mean[:, None]), axis=-1) + 1e-9)
        wav = gain[:, None] * (wav - mean[:, None])
        normalized = {}
        for n in self.stft_sizes():
            if spectra is not None and n in spectra:
                spec = affine_stft(spectra[n], wav.shape[-1], n, gain, -gain * mean)
                if spec is not None:
                    normalized[n] = spec
        outputs: list[SubOutput] = []
        if self.use_mpd:
            outputs += MultiPeriodDiscriminator(
                self.periods, self.mpd_channels, self.mpd_max_channels, dtype=self.dtype, name="mpd"
            )(wav)
        if self.use_mbstft:
            outputs += MultiBandSTFTDiscriminator(
                self.fft_sizes, self.bands, self.stft_channels, dtype=self.dtype, name="mbstft"
            )(wav, normalized)
        return outputs
