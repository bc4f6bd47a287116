"""Stage-1 waveform autoencoder: convolutional encoder/decoder around the normalized bottleneck.

The bottleneck is `bottleneck.kind`'s: F3's normalized noisy bottleneck ("f3", bottleneck.py),
the KL-regularized one ("vae", vae_bottleneck.py) or a plain projection ("plain",
plain_bottleneck.py); the parameters are under "bottleneck" whichever it is.

Oobleck / DAC family: each encoder block is three residual units (dilations 1, 3, 9, Snake
activations, weight-normalized convolutions) followed by a strided convolution with kernel
2*stride; the decoder mirrors it with transposed convolutions. All padding is explicit, so an
input of L samples (a multiple of hop) gives exactly L // hop latent frames and T frames decode
to exactly T * hop samples.

Channel widths: encoder block i maps channels*mults[i] -> channels*mults[i+1]; the decoder
walks the same widths backwards. The encoder ends in a kernel-3 convolution to `out_dim`
(= latent_dim), and the bottleneck's projection maps that to the latent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from f3_jax.models.bottleneck import NormalizedNoisyBottleneck
from f3_jax.models.layers import Snake, WNConv1d, WNConvTranspose1d
from f3_jax.models.llm_layers import remat
from f3_jax.models.plain_bottleneck import PlainBottleneck
from f3_jax.models.vae_bottleneck import VAEBottleneck

Dtype = jnp.dtype | str
_STEM_KERNEL = 7  # first/last convolutions (as in DAC)
_OUT_KERNEL = 3  # encoder's last convolution to the latent width
BOTTLENECKS = ("f3", "vae", "plain")  # bottleneck.kind


def zero_past(x: jax.Array, limit: jax.Array | None) -> jax.Array:
    """x (B, L, C) with rows at or past `limit` ((B,) counts; None: all kept) set to zero.

    What makes a window padded past its signal's end exact: every convolution that mixes
    rows reads its input through this, so past the signal it sees zeros, as its own zero
    padding shows it in a pass over the signal alone; the rows of the signal then come out
    as in that pass. The rows past it hold garbage (biases), which only row-wise operations
    (Snake, 1x1 convolutions, residual sums) read. Masking the inputs rather than the
    outputs fuses into the Snake before each convolution: no extra buffer.
    """
    if limit is None:
        return x
    rows = jnp.arange(x.shape[1])[None, :, None]
    return jnp.where(rows < limit[:, None, None], x, jnp.zeros((), x.dtype))


class ResidualUnit(nn.Module):
    """x + conv1x1(snake(conv_k,dilated(snake(x)))); the dilated convolution reads no row
    past `limit` (zero_past)."""

    channels: int
    dilation: int
    kernel_size: int = 7
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, limit: jax.Array | None = None) -> jax.Array:
        y = zero_past(Snake(dtype=self.dtype)(x), limit)
        y = WNConv1d(self.channels, self.kernel_size, dilation=self.dilation, dtype=self.dtype)(y)
        y = Snake(dtype=self.dtype)(y)
        y = WNConv1d(self.channels, 1, dtype=self.dtype)(y)
        return x.astype(self.dtype) + y


class EncoderBlock(nn.Module):
    """Residual units at the input width, then a strided convolution (L -> L // stride).
    `limit`: (B,) rows of signal per example (zero_past), multiples of stride."""

    features: int
    stride: int
    dilations: Sequence[int] = (1, 3, 9)
    kernel_size: int = 7
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, limit: jax.Array | None = None) -> jax.Array:
        for d in self.dilations:
            x = ResidualUnit(x.shape[-1], d, self.kernel_size, dtype=self.dtype)(x, limit)
        x = zero_past(Snake(dtype=self.dtype)(x), limit)
        return WNConv1d(self.features, 2 * self.stride, stride=self.stride, dtype=self.dtype)(x)


class DecoderBlock(nn.Module):
    """A transposed convolution (T -> T * stride), then residual units at the output width.
    `limit`: (B,) input rows of signal per example (zero_past)."""

    features: int
    stride: int
    dilations: Sequence[int] = (1, 3, 9)
    kernel_size: int = 7
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, limit: jax.Array | None = None) -> jax.Array:
        x = zero_past(Snake(dtype=self.dtype)(x), limit)
        x = WNConvTranspose1d(self.features, self.stride, dtype=self.dtype)(x)
        limit = None if limit is None else limit * self.stride
        for d in self.dilations:
            x = ResidualUnit(self.features, d, self.kernel_size, dtype=self.dtype)(x, limit)
        return x


class Encoder(nn.Module):
    channels: int
    channel_mults: Sequence[int]
    strides: Sequence[int]
    out_dim: int
    dilations: Sequence[int] = (1, 3, 9)
    kernel_size: int = 7
    dtype: Dtype = jnp.float32
    remat: str = "none"  # of each block under grad (llm_layers.REMAT_POLICIES)

    @nn.compact
    def __call__(self, wav: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """(B, L) -> (B, L // hop, out_dim); L must be a multiple of hop.

        valid: (B,) samples of each row that are signal (multiples of hop); the rest is
        zero padding, and the frames of the signal come out as if it were not there.
        """
        hop = math.prod(self.strides)
        if wav.shape[-1] % hop:
            raise ValueError(f"input length {wav.shape[-1]} is not a multiple of hop {hop}")
        x = WNConv1d(self.channels * self.channel_mults[0], _STEM_KERNEL, dtype=self.dtype)(
            zero_past(wav[..., None], valid)
        )
        block = remat(EncoderBlock, self.remat)
        for i, (mult, stride) in enumerate(zip(self.channel_mults[1:], self.strides)):
            x = block(
                self.channels * mult,
                stride,
                tuple(self.dilations),
                self.kernel_size,
                dtype=self.dtype,
                name=f"EncoderBlock_{i}",  # the plain module's name, whatever the remat
            )(x, valid)
            valid = None if valid is None else valid // stride
        x = zero_past(Snake(dtype=self.dtype)(x), valid)
        return WNConv1d(self.out_dim, _OUT_KERNEL, dtype=self.dtype)(x)


class Decoder(nn.Module):
    channels: int
    channel_mults: Sequence[int]
    strides: Sequence[int]
    dilations: Sequence[int] = (1, 3, 9)
    kernel_size: int = 7
    final_tanh: bool = False
    dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, z: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """(B, T, D) -> (B, T * hop).

        valid: (B,) frames of each row that are signal; the samples of those frames come
        out as if the rest (zero padding) were not there.
        """
        z = zero_past(z, valid)
        x = WNConv1d(self.channels * self.channel_mults[-1], _STEM_KERNEL, dtype=self.dtype)(z)
        widths = [self.channels * m for m in self.channel_mults[:-1]]
        block = remat(DecoderBlock, self.remat)
        for i, (width, stride) in enumerate(zip(reversed(widths), reversed(tuple(self.strides)))):
            x = block(
                width,
                stride,
                tuple(self.dilations),
                self.kernel_size,
                dtype=self.dtype,
                name=f"DecoderBlock_{i}",
            )(x, valid)
            valid = None if valid is None else valid * stride
        x = zero_past(Snake(dtype=self.dtype)(x), valid)
        x = WNConv1d(1, _STEM_KERNEL, dtype=self.dtype)(x)[..., 0]
        return jnp.tanh(x) if self.final_tanh else x


class Autoencoder(nn.Module):
    """Encoder -> bottleneck (BOTTLENECKS) -> Decoder. Build with `Autoencoder.from_config`."""

    channels: int = 128
    channel_mults: Sequence[int] = (1, 2, 4, 8, 16)
    strides: Sequence[int] = (2, 4, 6, 10)
    latent_dim: int = 64
    dilations: Sequence[int] = (1, 3, 9)
    kernel_size: int = 7
    final_tanh: bool = False
    bottleneck_kind: str = "f3"
    norm: str = "layer"
    noise: str = "uniform"
    noise_max: float = 0.5
    noise_scale: float = 0.25
    momentum: float = 0.99
    vae_min_std: float = 1e-4
    dtype: Dtype = jnp.float32
    remat: str = "none"  # of the encoder's and decoder's blocks under grad

    @classmethod
    def from_config(cls, config) -> Autoencoder:
        """config: the full stage-1 config (uses model, bottleneck, compute_dtype)."""
        m, b = config.model, config.bottleneck
        return cls(
            channels=int(m.channels),
            channel_mults=tuple(m.channel_mults),
            strides=tuple(m.strides),
            latent_dim=int(m.latent_dim),
            dilations=tuple(m.dilations),
            kernel_size=int(m.kernel_size),
            final_tanh=bool(m.final_tanh),
            # exports from before the baselines lack kind and vae_min_std: F3's then
            bottleneck_kind=b.get("kind", "f3"),
            norm=b.norm,
            noise=b.noise,
            noise_max=float(b.noise_max),
            noise_scale=float(b.noise_scale),
            momentum=float(b.batch_norm_momentum),
            vae_min_std=float(b.get("vae_min_std", 1e-4)),
            dtype=jnp.dtype(config.compute_dtype),
            remat=m.get("remat", "none"),  # exports from before the key existed lack it
        )

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def uses_batch_stats(self) -> bool:
        """Whether the variables hold a "batch_stats" collection (F3's batch norm)."""
        return self.bottleneck_kind == "f3" and self.norm == "batch"

    def _make_bottleneck(self) -> nn.Module:
        if self.bottleneck_kind == "f3":
            return NormalizedNoisyBottleneck(
                self.latent_dim, self.norm, self.noise, self.noise_max, self.noise_scale,
                self.momentum, dtype=self.dtype,
            )  # fmt: skip
        if self.bottleneck_kind == "vae":
            return VAEBottleneck(self.latent_dim, self.vae_min_std, self.dtype)
        if self.bottleneck_kind == "plain":
            return PlainBottleneck(self.latent_dim, self.dtype)
        raise ValueError(f"bottleneck.kind={self.bottleneck_kind!r}: use one of {BOTTLENECKS}")

    def setup(self) -> None:
        self.encoder = Encoder(
            self.channels,
            tuple(self.channel_mults),
            tuple(self.strides),
            self.latent_dim,
            tuple(self.dilations),
            self.kernel_size,
            dtype=self.dtype,
            remat=self.remat,
        )
        self.bottleneck = self._make_bottleneck()
        self.decoder = Decoder(
            self.channels,
            tuple(self.channel_mults),
            tuple(self.strides),
            tuple(self.dilations),
            self.kernel_size,
            self.final_tanh,
            dtype=self.dtype,
            remat=self.remat,
        )

    def encode(
        self, wav: jax.Array, *, train: bool = False, valid: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """(B, L) -> dict(z (B,T,D) the clean latents, z_noisy (the decoder's input: == z
        unless train), sigma (the noise scale: (B,), or the VAE's (B,T,D) std in training)),
        and in training the bottleneck's loss terms per frame ("kl" (B,T) of the VAE).
        valid: (B,) samples of signal per row, the rest padding (Encoder); inference only."""
        z, z_noisy, sigma = self.bottleneck(self.encoder(wav, valid), train=train)
        terms = self.bottleneck.train_terms(z, sigma) if train else {}
        return {"z": z, "z_noisy": z_noisy, "sigma": sigma, **terms}

    def decode(self, z: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """(B, T, D) -> (B, T * hop) waveform; valid: (B,) frames of signal per row (Decoder)."""
        return self.decoder(z, valid)

    def __call__(self, wav: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        out = self.encode(wav, train=train)
        return {"wav": self.decode(out["z_noisy"]), **out}


def _encoder_field(m) -> int:
    """Samples spanned by the inputs of one encoder output frame (stride-1 span + hop)."""
    span, jump = _STEM_KERNEL - 1, 1
    for stride in m.strides:
        span += sum((m.kernel_size - 1) * d for d in m.dilations) * jump
        span += (2 * stride - 1) * jump
        jump *= stride
    span += (_OUT_KERNEL - 1) * jump
    return span + 1


def _decoder_field(m) -> int:
    """Latent frames any one output sample depends on (walk from the output back)."""
    r = 1 + (_STEM_KERNEL - 1)  # output samples feeding one sample through the last conv
    for stride in reversed(tuple(m.strides)):
        r += sum((m.kernel_size - 1) * d for d in m.dilations)
        # r consecutive outputs of a kernel-2s, stride-s transposed conv need at most this many
        # inputs: positions t with t*s + k in a window of r, k in [0, 2s).
        r = (r + 2 * stride - 2) // stride + 1
    return r + (_STEM_KERNEL - 1)


def receptive_field(config) -> tuple[int, int]:
    """(encoder receptive field in samples, decoder receptive field in latent frames).

    A latent frame depends only on samples within the encoder field around it, and an output
    sample only on latent frames within the decoder field: chunked encode/decode of long inputs
    is exact with overlaps of at least half of these on each side.
    """
    m = config.model
    return _encoder_field(m), _decoder_field(m)
