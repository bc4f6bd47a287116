"""From representations to the LLM: ×4 frame-stacking downsampler and the embedding adapter.

`Downsampler`: (B, T, W) frames -> (B, T/f, width) patches (stack f frames, then an MLP); the
stage-3 flow head is conditioned on these. `LLMAdapter`: patches -> the LLM's embedding space.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_INIT = nn.initializers.normal(0.02)


def _dense(features: int, names: tuple[str, str], dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(_INIT, names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (names[1],)),
        name=name,
    )


def stack_patches(x: jax.Array, mask: jax.Array, factor: int) -> tuple[jax.Array, jax.Array]:
    """(B, T, W), (B, T) -> (B, ceil(T/f), f*W), (B, ceil(T/f)); a patch is valid when its
    first frame is (a clip's last patch may be partly padding, as its last frame is)."""
    b, t, w = x.shape
    pad = (-t) % factor
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad)))
    patches = x.reshape(b, (t + pad) // factor, factor * w)
    return patches, mask.reshape(b, -1, factor)[:, :, 0]


class Downsampler(nn.Module):
    factor: int = 4
    width: int = 1024
    dtype: str = "float32"

    @nn.compact
    def __call__(self, r: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, patch_mask = stack_patches(r, mask, self.factor)
        dtype = jnp.dtype(self.dtype)
        x = _dense(self.width, ("dense_in", "dense_out"), dtype, "stack_proj")(x)
        x = _dense(self.width, ("dense_in", "dense_out"), dtype, "mlp")(nn.gelu(x))
        return x, patch_mask


class LLMAdapter(nn.Module):
    hidden: int = 2048
    out_dim: int = 576  # the LLM's embedding width
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = jnp.dtype(self.dtype)
        h = _dense(self.hidden, ("dense_in", "dense_out"), dtype, "in_proj")(x)
        return _dense(self.out_dim, ("dense_in", "dense_out"), dtype, "out_proj")(nn.gelu(h))
