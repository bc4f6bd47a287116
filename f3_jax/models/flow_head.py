"""Stage 3: the patch flow head and the stop head.

`PatchFlowHead` predicts the rectified-flow velocity of one latent patch (patch_frames ×
latent_dim, default 4 × 64, flattened) from the noisy patch x_t, the flow time t and a condition
built from the frozen LLM's hidden state and the downsampled representation of the previous
patch. It is a residual MLP with adaptive LayerNorm (adaLN, as in DiT / MAR): every block reads a
shift, a scale and a gate from the conditioning vector (time embedding + condition), and the
layers producing them start at zero, so each block starts as the identity and the head starts as
out_proj(LayerNorm(in_proj(x_t))), independent of t and of the condition.

Classifier-free guidance: where `drop_condition` is True (or, in training, with probability
`cond_drop_prob`, from the "dropout" rng stream) the condition is replaced by a learned null
embedding; the time embedding is kept.

Conventions (see f3_jax/losses/flow_matching.py): t = 0 is noise, t = 1 is data, the output is
the velocity d x_t / d t = x1 - noise, in float32. Any leading dimensions are allowed:
x_t (..., P, D), t (...), llm_state (..., H_llm), prev_repr (..., H_repr), so a trainer can feed
all patches of a batch (B, N, P, D) at once.

Logical axes: the residual MLPs use ("embed", "mlp") / ("mlp", "embed") like the LLM's MLP; all
other projections are small dense layers ("dense_in", "dense_out"); biases and the null embedding
are replicated ("channels"), norm scales "norm".
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from f3_jax.models.llm_layers import remat

Dtype = Any
# Flow time is in [0, 1]; the sinusoids are laid out for integer-like steps (as in DDPM / DiT),
# so t is scaled up before embedding. Without it the low frequencies would barely move.
TIME_SCALE = 1000.0
_MAX_PERIOD = 10000.0


def timestep_embedding(t: jax.Array, dim: int, max_period: float = _MAX_PERIOD) -> jax.Array:
    """Sinusoidal embedding (..., dim) of flow times t (...) in [0, 1], float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (TIME_SCALE * t.astype(jnp.float32))[..., None] * freqs
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[..., :1])], axis=-1)
    return emb


def _dense(
    features: int,
    name: str,
    dtype: Dtype,
    param_dtype: Dtype,
    names: tuple[str, str] = ("dense_in", "dense_out"),
    bias_names: tuple[str] = ("channels",),
    zero: bool = False,
) -> nn.Dense:
    kernel_init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, bias_names),
        name=name,
    )


def _plain_norm(x: jax.Array, dtype: Dtype) -> jax.Array:
    """LayerNorm without learned scale or bias: adaLN supplies them."""
    return nn.LayerNorm(use_scale=False, use_bias=False, dtype=dtype)(x)


def _input_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    """Learned LayerNorm for external inputs (LLM hidden states can have huge outlier channels)."""
    return nn.LayerNorm(
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale) + shift


class AdaLNBlock(nn.Module):
    """h + gate * mlp(modulate(norm(h), shift, scale)); shift, scale, gate from cond (0 at init)."""

    width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, cond: jax.Array) -> jax.Array:
        mod = _dense(3 * self.width, "modulation", self.dtype, self.param_dtype, zero=True)
        shift, scale, gate = jnp.split(mod(nn.silu(cond)), 3, axis=-1)
        y = _modulate(_plain_norm(h, self.dtype), shift, scale)
        y = _dense(self.width, "fc1", self.dtype, self.param_dtype, ("embed", "mlp"), ("mlp",))(y)
        y = _dense(self.width, "fc2", self.dtype, self.param_dtype, ("mlp", "embed"), ("embed",))(
            nn.silu(y)
        )
        return h + gate * y


class ConditionProjector(nn.Module):
    """proj(norm(llm_state)) + proj(norm(prev_repr)) -> (..., width)."""

    width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, llm_state: jax.Array, prev_repr: jax.Array) -> jax.Array:
        d, p = self.dtype, self.param_dtype
        llm = _dense(self.width, "llm_proj", d, p)(_input_norm("llm_norm", d, p)(llm_state))
        rep = _dense(self.width, "repr_proj", d, p)(_input_norm("repr_norm", d, p)(prev_repr))
        return llm + rep


class PatchFlowHead(nn.Module):
    """Velocity of a noisy latent patch, conditioned on the LLM state and the previous patch."""

    width: int = 1024
    depth: int = 6
    patch_frames: int = 4
    latent_dim: int = 64
    time_embed_dim: int = 256
    cond_drop_prob: float = 0.1  # training only, when no explicit drop_condition is given
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"  # of each adaLN block under grad: none, full, dots_saveable

    def _time_embedding(self, t: jax.Array) -> jax.Array:
        d, p = self.dtype, self.param_dtype
        emb = timestep_embedding(t, self.time_embed_dim)
        emb = _dense(self.width, "time_fc1", d, p)(emb)
        return _dense(self.width, "time_fc2", d, p)(nn.silu(emb))

    def _drop_mask(self, shape, train: bool, drop_condition: jax.Array | None) -> jax.Array:
        if drop_condition is not None:
            return jnp.broadcast_to(jnp.asarray(drop_condition, bool), shape)
        if train and self.cond_drop_prob > 0:
            return jax.random.bernoulli(self.make_rng("dropout"), self.cond_drop_prob, shape)
        return jnp.zeros(shape, bool)

    @nn.compact
    def __call__(
        self,
        x_t: jax.Array,
        t: jax.Array,
        llm_state: jax.Array,
        prev_repr: jax.Array,
        *,
        train: bool = False,
        drop_condition: jax.Array | None = None,
    ) -> jax.Array:
        """Velocity v (..., P, D) of x_t (..., P, D) at flow times t (...).

        llm_state (..., H_llm), prev_repr (..., H_repr): the condition. drop_condition (...) bool:
        True replaces the condition by the null embedding (None: no drop, or in training a
        random drop with probability cond_drop_prob from the "dropout" rng).
        """
        patch = (self.patch_frames, self.latent_dim)
        if x_t.shape[-2:] != patch:
            raise ValueError(f"x_t has shape {x_t.shape}: expected (..., {patch[0]}, {patch[1]})")
        lead = x_t.shape[:-2]
        d, p = self.dtype, self.param_dtype
        h = _dense(self.width, "in_proj", d, p)(x_t.reshape(*lead, patch[0] * patch[1]))

        c = ConditionProjector(self.width, d, p, name="condition")(llm_state, prev_repr)
        null = self.param(
            "null_condition",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("channels",)),
            (self.width,),
            p,
        )
        drop = self._drop_mask(lead, train, drop_condition)
        c = jnp.where(drop[..., None], null.astype(c.dtype), c)
        cond = c + self._time_embedding(jnp.broadcast_to(t, lead))

        block = remat(AdaLNBlock, self.remat)
        for i in range(self.depth):
            h = block(self.width, d, p, name=f"block_{i}")(h, cond)
        final_mod = _dense(2 * self.width, "final_modulation", d, p, zero=True)
        shift, scale = jnp.split(final_mod(nn.silu(cond)), 2, axis=-1)
        h = _modulate(_plain_norm(h, d), shift, scale)
        out = _dense(patch[0] * patch[1], "out_proj", d, p)(h)
        return out.reshape(x_t.shape).astype(jnp.float32)


class StopHead(nn.Module):
    """Logit of "the audio ends here" from the LLM state: (..., H_llm) -> (...), float32.

    hidden = 0 makes it a linear probe on the normalized state.
    """

    hidden: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, llm_state: jax.Array) -> jax.Array:
        d, p = self.dtype, self.param_dtype
        h = _input_norm("norm", d, p)(llm_state)
        if self.hidden:
            h = nn.silu(_dense(self.hidden, "fc", d, p)(h))
        return _dense(1, "out", d, p)(h)[..., 0].astype(jnp.float32)
