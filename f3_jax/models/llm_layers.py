"""Building blocks of the frozen decoder-only LLM (Llama / Qwen2 / Qwen3 / SmolLM2 family).

RMSNorm, rotary embeddings (rotate-half layout, optional Llama-3 frequency scaling),
grouped-query attention with an optional KV cache slot, and the SwiGLU MLP. Every parameter
carries logical axis names from f3_jax.parallel.RULES.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from f3_jax.parallel import constrain_batch

Dtype = Any
_INIT = nn.initializers.normal(0.02)

# Rematerialization (activation checkpointing) of a block in the backward pass:
#   none           keep every activation (fastest, most memory);
#   full           keep only the block's inputs, recompute everything inside it;
#   dots_saveable  keep the products with weights (matmuls without batch dimensions, and
#                  convolutions), recompute the rest (norms, activations, attention scores).
REMAT_POLICIES = ("none", "full", "dots_saveable")


def _dots_and_convs_saveable(prim, *args, **params) -> bool:
    if prim is jax.lax.conv_general_dilated_p:
        return True
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *args, **params)


def remat(module_class, policy: str, prevent_cse: bool = True):
    """`module_class` wrapped in `nn.remat` with one of REMAT_POLICIES ("none": unchanged).

    Parameter names do not change: give the wrapped module the name the plain one would have.
    Inside `nn.scan` pass prevent_cse=False (the loop already keeps XLA from merging the
    recomputation with the forward).
    """
    if policy == "none":
        return module_class
    if policy == "full":
        return nn.remat(module_class, prevent_cse=prevent_cse)
    if policy == "dots_saveable":
        return nn.remat(module_class, policy=_dots_and_convs_saveable, prevent_cse=prevent_cse)
    raise ValueError(f"remat policy {policy!r} is not one of {REMAT_POLICIES}")


def _partitioned(init, names: tuple[str, ...]):
    return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
    """x / rms(x) * scale, computed in float32 (as the reference implementations do)."""

    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", _partitioned(nn.initializers.ones, ("norm",)), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(self.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """Inverse frequencies of the rotary pairs.

    `scaling`: None; Llama-3 {"factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}; or {"freq_factors": (...)} (GGUF rope_freqs.weight,
    the same Llama-3 scaling precomputed by llama.cpp as divisors of each frequency).
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if not scaling:
        return inv_freq.astype(np.float32)
    if "freq_factors" in scaling:
        return (inv_freq / np.asarray(scaling["freq_factors"], np.float64)).astype(np.float32)
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between blended.
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, blended, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate-half rotary embedding. x: (B, S, N, D), positions: (B, S) int."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # (B, S, D/2)
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def dot_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q: (B,S,H,D), k/v: (B,T,KV,D), mask: (B,S,T) bool."""
    b, s, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, s, kv, h // kv, d)
    scores = jnp.einsum("bskgd,btkd->bkgst", q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(d)
    # A large finite value (not -inf) keeps fully masked rows (left padding) free of NaNs.
    scores = jnp.where(mask[:, None, None], scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
    return out.reshape(b, s, h, d)


class Attention(nn.Module):
    """Self-attention with GQA, optional q/k/v biases and per-head q/k RMSNorm (Qwen3)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    inv_freq: Any  # np.ndarray of rotary inverse frequencies
    rms_norm_eps: float
    attention_bias: bool = False
    attention_out_bias: bool = False
    qk_norm: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _proj(self, name: str, heads: int, head_axis: str, bias: bool) -> nn.DenseGeneral:
        return nn.DenseGeneral(
            (heads, self.head_dim),
            use_bias=bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            kernel_init=_partitioned(_INIT, ("embed", head_axis, "head_dim")),
            bias_init=_partitioned(nn.initializers.zeros, (head_axis, "head_dim")),
        )

    @nn.compact
    def __call__(self, x, positions, mask, kv_cache=None, cache_index=None):
        q = self._proj("q_proj", self.num_heads, "heads", self.attention_bias)(x)
        k = self._proj("k_proj", self.num_kv_heads, "kv_heads", self.attention_bias)(x)
        v = self._proj("v_proj", self.num_kv_heads, "kv_heads", self.attention_bias)(x)
        if self.qk_norm:
            norm = dict(eps=self.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
            q = RMSNorm(name="q_norm", **norm)(q)
            k = RMSNorm(name="k_norm", **norm)(k)
        q = apply_rope(q, positions, self.inv_freq)
        k = apply_rope(k, positions, self.inv_freq)
        new_cache = None
        if kv_cache is not None:
            # Write this step's keys/values at slots [cache_index, cache_index + S).
            k_all, v_all = kv_cache
            start = (0, cache_index, 0, 0)
            k_all = jax.lax.dynamic_update_slice(k_all, k.astype(k_all.dtype), start)
            v_all = jax.lax.dynamic_update_slice(v_all, v.astype(v_all.dtype), start)
            new_cache = (k_all, v_all)
            k, v = k_all.astype(self.dtype), v_all.astype(self.dtype)
        out = dot_attention(q, k, v, mask)
        out = nn.DenseGeneral(
            x.shape[-1],
            axis=(-2, -1),
            use_bias=self.attention_out_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="o_proj",
            kernel_init=_partitioned(_INIT, ("heads", "head_dim", "embed")),
            bias_init=_partitioned(nn.initializers.zeros, ("embed",)),
        )(out)
        return out, new_cache


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    intermediate_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _dense(self, features: int, names: tuple[str, str], name: str) -> nn.Dense:
        return nn.Dense(
            features,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_partitioned(_INIT, names),
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gate = self._dense(self.intermediate_size, ("embed", "mlp"), "gate_proj")(x)
        up = self._dense(self.intermediate_size, ("embed", "mlp"), "up_proj")(x)
        return self._dense(x.shape[-1], ("mlp", "embed"), "down_proj")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)).

    Returns (x, updated (k, v) cache or None): as the body of `nn.scan`, the carry and what is
    stacked over the layers.
    """

    config: Any  # LLMConfig (kept untyped here to avoid an import cycle)
    inv_freq: Any

    @nn.compact
    def __call__(self, x, positions, mask, kv_cache=None, cache_index=None):
        c = self.config
        x = constrain_batch(x)  # keeps the residual stream split by batch through the scan
        dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        norm = dict(eps=c.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        attn = Attention(
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            self.inv_freq,
            c.rms_norm_eps,
            attention_bias=c.attention_bias,
            attention_out_bias=c.attention_out_bias,
            qk_norm=c.qk_norm,
            dtype=dtype,
            param_dtype=param_dtype,
            name="attn",
        )
        h, new_cache = attn(
            RMSNorm(name="attn_norm", **norm)(x), positions, mask, kv_cache, cache_index
        )
        x = x + h
        mlp = SwiGLU(c.intermediate_size, dtype=dtype, param_dtype=param_dtype, name="mlp")
        x = x + mlp(RMSNorm(name="mlp_norm", **norm)(x))
        return x, new_cache


def decoder_layers(config, inv_freq, *, name: str | None = None):
    """The config's decoder layers, each wrapped with its remat policy.

    config.scan_layers: one `nn.scan` module over num_layers identical layers, its parameters
    stacked on a leading "layers" axis (one layer traced and compiled instead of num_layers);
    else a list of layers named layers_0, layers_1, ... Either goes to `llm.run_layers`.
    """
    policy = getattr(config, "remat", "none")
    if not getattr(config, "scan_layers", False):
        block = remat(DecoderLayer, policy)
        kwargs = lambda i: {} if name is None else {"name": f"{name}_{i}"}
        return [block(config, inv_freq, **kwargs(i)) for i in range(config.num_layers)]
    scanned = nn.scan(
        remat(DecoderLayer, policy, prevent_cse=False),
        variable_axes={"params": 0},
        split_rngs={"params": True},
        # x is the carry; positions, mask and the cache slot are shared; the cache is per layer.
        in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
        length=config.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    kwargs = {} if name is None else {"name": name}
    return scanned(config, inv_freq, **kwargs)
