"""The plain bottleneck (`bottleneck.kind = "plain"`): a projection to the latent width and
nothing else, the baseline that shows what F3's normalization and noise add.

No normalization, no noise and no loss of its own: the latents' scale is whatever the encoder
and decoder settle on, and the decoder never sees a perturbed latent in training.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from f3_jax.models.bottleneck import projection


class PlainBottleneck(nn.Module):
    """z = proj(h), the same in training and inference."""

    latent_dim: int
    dtype: jnp.dtype | str = jnp.float32

    def train_terms(self, z: jax.Array, sigma: jax.Array) -> dict[str, jax.Array]:
        """No loss of its own."""
        return {}

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = False):
        """h (B, T, C) -> (z, z, zeros (B,)): the decoder reads z itself, always."""
        z = projection(self.latent_dim, self.dtype)(h).astype(self.dtype)
        return z, z, jnp.zeros(h.shape[:1], jnp.float32)
