"""The stage-2 representation encoder: a pre-norm rotary transformer over frozen latents.

Causal by default, so that generation (stage 3) can run it incrementally with a KV cache; the
bidirectional mode sees the whole clip. Its blocks are the frozen LLM's decoder blocks
(`llm_layers.DecoderLayer`), configured by an `LLMConfig` that has no vocabulary; with
scan_layers they run under one `nn.scan` (parameters params/layers/..., stacked over the
blocks; `llm.stack_layer_params` converts the per-layer layout layers_0, layers_1, ...).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from f3_jax.models.llm import LLMConfig, attention_layout, init_cache, run_layers
from f3_jax.models.llm_layers import RMSNorm, decoder_layers, rope_inv_freq

_INIT = nn.initializers.normal(0.02)


class RepresentationEncoder(nn.Module):
    """(B, T, D) latents and (B, T) frame mask -> {"repr": (B, T, width), "cache"}."""

    width: int = 1024
    depth: int = 12
    num_heads: int = 16
    num_kv_heads: int = 16
    head_dim: int = 64
    mlp_dim: int = 4096
    causal: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"  # of each block under grad: none, full, dots_saveable
    scan_layers: bool = False  # nn.scan over the blocks: parameters under "layers", stacked

    @classmethod
    def from_config(cls, config) -> RepresentationEncoder:
        """From a stage-2 config; exports written before remat / scan_layers existed lack
        them and get the layout they were trained with (per-layer parameters)."""
        e = config.encoder
        return cls(
            e.width,
            e.depth,
            e.num_heads,
            e.num_kv_heads,
            e.head_dim,
            e.mlp_dim,
            e.causal,
            e.rope_theta,
            e.norm_eps,
            dtype=config.compute_dtype,
            remat=e.get("remat", "none"),
            scan_layers=bool(e.get("scan_layers", False)),
        )

    def block_config(self) -> LLMConfig:
        return LLMConfig(
            vocab_size=1,
            hidden_size=self.width,
            intermediate_size=self.mlp_dim,
            num_layers=self.depth,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            remat=self.remat,
            scan_layers=self.scan_layers,
        )

    def init_cache(self, batch: int, max_frames: int) -> dict:
        """Empty KV cache for incremental (causal) encoding of up to max_frames frames."""
        if not self.causal:
            raise ValueError("a bidirectional encoder cannot run incrementally")
        return init_cache(self.block_config(), batch, max_frames)

    @nn.compact
    def __call__(self, z: jax.Array, mask: jax.Array, cache: dict | None = None) -> dict:
        c = self.block_config()
        dtype = jnp.dtype(self.dtype)
        x = nn.Dense(
            self.width,
            dtype=dtype,
            param_dtype=jnp.dtype(self.param_dtype),
            kernel_init=nn.with_logical_partitioning(_INIT, ("dense_in", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="input_proj",
        )(z.astype(dtype))
        token_mask = mask.astype(bool)
        if self.causal:
            attn_mask, positions, cache = attention_layout(token_mask, None, cache)
        else:
            if cache is not None:
                raise ValueError("a bidirectional encoder takes no cache")
            positions = jnp.maximum(jnp.cumsum(token_mask, axis=1, dtype=jnp.int32) - 1, 0)
            attn_mask = jnp.broadcast_to(token_mask[:, None, :], token_mask.shape + (z.shape[1],))
        inv_freq = rope_inv_freq(self.head_dim, self.rope_theta, None)
        layers = decoder_layers(c, inv_freq, name="layers")
        x, _, cache = run_layers(layers, x, positions, attn_mask, cache)
        out = RMSNorm(self.norm_eps, dtype=dtype, name="final_norm")(x)
        return {"repr": out, "cache": cache}
