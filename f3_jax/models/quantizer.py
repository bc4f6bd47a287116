"""The frozen random-projection quantizer that turns latent frames into RQ-MTP targets.

BEST-RQ style: each (optionally stacked) latent frame is normalized, projected by a fixed random
matrix per codebook, and assigned the nearest of that codebook's fixed random codes (cosine
distance: both sides are l2-normalized). Nothing here is ever trained: the parameters come from
`config.quantizer.seed` alone and live in the train state outside the optimizer, so the targets
are the same across restarts, hosts and mesh shapes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_REPLICATED = ("codebooks", None, None)  # tiny and read by every device


def stack_frames(z: jax.Array, mask: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """(B, T, D) -> (B, T, count * D): frame t with the count - 1 frames after it.

    A stacked frame is valid when all of its frames are; frames past the end are zeros.
    """
    if count == 1:
        return z, mask
    t = z.shape[1]
    zp = jnp.pad(z, ((0, 0), (0, count - 1), (0, 0)))
    mp = jnp.pad(mask, ((0, 0), (0, count - 1)))
    stacked = jnp.concatenate([zp[:, i : i + t] for i in range(count)], axis=-1)
    valid = jnp.stack([mp[:, i : i + t] for i in range(count)], axis=-1).min(axis=-1)
    return stacked, valid


def _unit(x: jax.Array, axis: int = -1) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-12)


class RandomProjectionQuantizer(nn.Module):
    """(B, T, D) latents + (B, T) mask -> (B, T, num_codebooks) int32 tokens and their mask."""

    num_codebooks: int = 4
    codebook_size: int = 8192
    code_dim: int = 16
    stack: int = 1

    @nn.compact
    def __call__(self, z: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, valid = stack_frames(z.astype(jnp.float32), mask, self.stack)
        projection = self.param(
            "projection",
            nn.with_logical_partitioning(nn.initializers.xavier_normal(), _REPLICATED),
            (self.num_codebooks, x.shape[-1], self.code_dim),
        )
        codebooks = self.param(
            "codebooks",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), _REPLICATED),
            (self.num_codebooks, self.codebook_size, self.code_dim),
        )
        # Per-frame standardization: the targets ignore the frame's overall level and offset.
        x = x - x.mean(axis=-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        proj = _unit(jnp.einsum("btd,cde->btce", x, projection))
        scores = jnp.einsum("btce,cke->btck", proj, _unit(codebooks))
        tokens = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        return tokens, valid

    @classmethod
    def from_config(cls, config) -> RandomProjectionQuantizer:
        q = config.quantizer
        return cls(q.num_codebooks, q.codebook_size, q.code_dim, q.stack_frames)

    def init_params(self, seed: int, latent_dim: int) -> dict:
        """The frozen parameters for `seed` (boxed with logical names)."""
        z = jnp.zeros((1, self.stack, latent_dim), jnp.float32)
        return self.init(jax.random.key(seed), z, jnp.ones((1, self.stack)))["params"]
