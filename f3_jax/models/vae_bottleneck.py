"""The KL-regularized bottleneck (`bottleneck.kind = "vae"`), a baseline for F3's.

As stable-audio-tools' autoencoders use it: a projection predicts a mean and a scale per latent
channel, the standard deviation is softplus(scale) plus a small floor (so it never reaches 0
and its log stays finite), training decodes a reparameterized sample mean + std * eps, and
inference the mean. The KL term to a standard normal is taken as stable-audio-tools takes it:
sum over channels of (mean^2 + std^2 - log std^2 - 1) per frame, which is twice the KL
divergence in nats (no factor 1/2; the weight `loss.kl_weight` absorbs it), averaged over the
real frames by the trainer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from f3_jax.models.bottleneck import projection


def kl_per_frame(mean: jax.Array, std: jax.Array) -> jax.Array:
    """(B, T, D) posterior mean and std -> (B, T): sum over channels of
    mean^2 + std^2 - log(std^2) - 1 (2 x KL(N(mean, std^2) || N(0, 1)) in nats)."""
    mean, std = mean.astype(jnp.float32), std.astype(jnp.float32)
    var = jnp.square(std)
    return jnp.sum(jnp.square(mean) + var - jnp.log(var) - 1.0, axis=-1)


class VAEBottleneck(nn.Module):
    """Mean and softplus scale from one projection; a sample in training, the mean at inference."""

    latent_dim: int
    min_std: float = 1e-4  # the floor added to softplus(scale)
    dtype: jnp.dtype | str = jnp.float32

    def train_terms(self, z: jax.Array, sigma: jax.Array) -> dict[str, jax.Array]:
        """{"kl": (B, T)} from the mean z and the posterior std sigma of a training call."""
        return {"kl": kl_per_frame(z, sigma)}

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = False):
        """h (B, T, C) -> (mean, decoder input, std): in training the decoder input is
        mean + std * eps and std is (B, T, D); at inference the mean and zeros (B,)."""
        stats = projection(2 * self.latent_dim, self.dtype)(h).astype(jnp.float32)
        mean, scale = jnp.split(stats, 2, axis=-1)
        if not train:
            sigma = jnp.zeros(h.shape[:1], jnp.float32)
            return mean.astype(self.dtype), mean.astype(self.dtype), sigma
        std = jax.nn.softplus(scale) + self.min_std
        eps = jax.random.normal(self.make_rng("noise"), mean.shape, jnp.float32)
        sample = mean + std * eps
        return mean.astype(self.dtype), sample.astype(self.dtype), std
