"""RQ-MTP heads: from the representation at frame t, logits of the quantizer's tokens of
frames t+1 .. t+k, one linear head per horizon, every codebook at once."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class RQMTPHeads(nn.Module):
    """(B, T, W) -> (B, T, horizons, num_codebooks, codebook_size) float32 logits."""

    horizons: int = 4
    num_codebooks: int = 4
    codebook_size: int = 8192
    dtype: str = "float32"

    @classmethod
    def from_config(cls, config) -> RQMTPHeads:
        q = config.quantizer
        return cls(config.rq_mtp.horizons, q.num_codebooks, q.codebook_size, config.compute_dtype)

    @nn.compact
    def __call__(self, r: jax.Array) -> jax.Array:
        heads = nn.DenseGeneral(
            (self.horizons, self.num_codebooks, self.codebook_size),
            dtype=jnp.dtype(self.dtype),
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("embed", None, "codebooks", "codes")
            ),
            bias_init=nn.with_logical_partitioning(
                nn.initializers.zeros, (None, "codebooks", "codes")
            ),
            name="heads",
        )
        return heads(r).astype(jnp.float32)
