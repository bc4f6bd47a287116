"""The normalized noisy bottleneck of stage 1 (F3's, `bottleneck.kind = "f3"`): projection,
scale-free normalization, noise.

No KL term: the latent scale is fixed by the normalization, and robustness of the decoder to
small latent errors (what later stages produce) comes from training it on z + sigma * eps with a
noise level sigma drawn per example. At inference the bottleneck is deterministic.

Every bottleneck (this one, `vae_bottleneck.VAEBottleneck`, `plain_bottleneck.PlainBottleneck`)
maps encoder features h (B, T, C) to (z, z_noisy, sigma): the clean latents, what the decoder
reads in training (z + sigma * eps; z itself at inference), and the scale of that noise; and
`train_terms(z, sigma)` gives the loss terms it adds in training, per frame ({} here).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("layer", "batch", "none")
NOISES = ("uniform", "half_normal", "none")
_EPS = 1e-5


def projection(features: int, dtype) -> nn.Dense:
    """The dense projection every bottleneck starts with (parameters "proj", float32)."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("dense_in", "dense_out")
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("channels",)),
        name="proj",
    )


def layer_normalize(h: jax.Array) -> jax.Array:
    """Each frame: zero mean and unit RMS over its channels (no learned scale or bias)."""
    h = h - jnp.mean(h, axis=-1, keepdims=True)
    return h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + _EPS)


class NormalizedNoisyBottleneck(nn.Module):
    """Projection, normalization without learned scale, and noise in training (F3's)."""

    latent_dim: int
    norm: str = "layer"
    noise: str = "uniform"
    noise_max: float = 0.5
    noise_scale: float = 0.25
    momentum: float = 0.99
    dtype: jnp.dtype | str = jnp.float32

    def train_terms(self, z: jax.Array, sigma: jax.Array) -> dict[str, jax.Array]:
        """No loss of its own: the normalization fixes the scale."""
        return {}

    def _batch_normalize(self, h: jax.Array, train: bool) -> jax.Array:
        """Per channel: zero mean, unit variance over batch and time; running stats at inference."""
        init = lambda fill: nn.with_logical_partitioning(
            lambda shape: jnp.full(shape, fill, jnp.float32), ("channels",)
        )
        mean_var = self.variable("batch_stats", "mean", init(0.0), (self.latent_dim,))
        var_var = self.variable("batch_stats", "var", init(1.0), (self.latent_dim,))
        if train:
            mean = jnp.mean(h, axis=(0, 1))
            var = jnp.mean(jnp.square(h - mean), axis=(0, 1))
            if not self.is_initializing():
                m = self.momentum
                mean_var.value = m * mean_var.value + (1 - m) * jax.lax.stop_gradient(mean)
                var_var.value = m * var_var.value + (1 - m) * jax.lax.stop_gradient(var)
        else:
            mean, var = mean_var.value, var_var.value
        return (h - mean) * jax.lax.rsqrt(var + _EPS)

    def _sigma(self, batch: int) -> jax.Array:
        if self.noise == "none":
            return jnp.zeros((batch,), jnp.float32)
        key = self.make_rng("noise")
        if self.noise == "uniform":
            return jax.random.uniform(key, (batch,), jnp.float32, 0.0, self.noise_max)
        if self.noise == "half_normal":
            return self.noise_scale * jnp.abs(jax.random.normal(key, (batch,), jnp.float32))
        raise ValueError(f"bottleneck.noise={self.noise!r}: use one of {NOISES}")

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = False):
        """h (B, T, C) -> (z_clean, z_noisy, sigma) with z (B, T, latent_dim), sigma (B,)."""
        h = projection(self.latent_dim, self.dtype)(h)
        # statistics in float32: bf16 means/variances over many frames lose too much.
        h = h.astype(jnp.float32)
        if self.norm == "layer":
            z = layer_normalize(h)
        elif self.norm == "batch":
            z = self._batch_normalize(h, train)
        elif self.norm == "none":
            z = h
        else:
            raise ValueError(f"bottleneck.norm={self.norm!r}: use one of {NORMS}")
        batch = h.shape[0]
        if not train:
            sigma = jnp.zeros((batch,), jnp.float32)
            return z.astype(self.dtype), z.astype(self.dtype), sigma
        sigma = self._sigma(batch)
        if self.noise == "none":
            z_noisy = z
        else:
            eps = jax.random.normal(self.make_rng("noise"), z.shape, jnp.float32)
            z_noisy = z + sigma[:, None, None] * eps
        return z.astype(self.dtype), z_noisy.astype(self.dtype), sigma
