"""The frozen decoder-only LLM used by stages 2 and 3.

`LLM` covers the Llama family (Llama 3.x, Qwen2/2.5/3, SmolLM2): token ids or input embeddings
in, logits and any requested hidden states out, with an optional KV cache whose results equal a
full recompute. Weights come from `f3_jax.models.llm_loaders.load_llm`.

Check it on real weights: `python -m f3_jax.llm_check --weights smollm2 --prompt "..."`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from f3_jax import parallel
from f3_jax.models.llm_layers import RMSNorm, decoder_layers, rope_inv_freq


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """Architecture of a Llama-family decoder. Field names follow HF config.json where they can."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # None, or Llama-3 {"factor", "low_freq_factor", ...}
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q/k/v (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on q and k before rotary (Qwen3)
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # dtype of freshly initialized parameters
    attention_out_bias: bool = False  # bias on o_proj (Llama with attention_bias=True)
    # How the layers run (not part of a checkpoint file; the loaders take them as arguments):
    remat: str = "none"  # rematerialization of each layer under grad: none, full, dots_saveable
    scan_layers: bool = False  # nn.scan over the layers: parameters stacked on a "layers" axis

    def __hash__(self):  # rope_scaling is a dict: hash its items so the config can be static
        fields = dataclasses.astuple(self)
        return hash(tuple(tuple(sorted(f.items())) if isinstance(f, dict) else f for f in fields))


def init_cache(config: LLMConfig, batch: int, max_len: int, dtype: Any = None) -> dict:
    """Empty KV cache for `max_len` tokens: per-layer keys/values plus bookkeeping.

    valid: (B, T) which slots hold real (unpadded) tokens; length: slots used so far;
    next_pos: (B,) rotary position of each row's next real token.
    """
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch, max_len, config.num_kv_heads, config.head_dim)
    # Every leaf is its own buffer: the cache is donated to the jitted decode steps, and a
    # donated tree in which two leaves share a buffer fails ("donate the same buffer twice").
    if config.scan_layers:  # one array per k and v, stacked over the layers like the weights
        k = jnp.zeros((config.num_layers, *shape), dtype)
        v = jnp.zeros((config.num_layers, *shape), dtype)
    else:
        k = [jnp.zeros(shape, dtype) for _ in range(config.num_layers)]
        v = [jnp.zeros(shape, dtype) for _ in range(config.num_layers)]
    return {
        "k": k,
        "v": v,
        "valid": jnp.zeros((batch, max_len), bool),
        "length": jnp.zeros((), jnp.int32),
        "next_pos": jnp.zeros((batch,), jnp.int32),
    }


class LLM(nn.Module):
    """Decoder-only transformer. See `__call__` for inputs and outputs."""

    config: LLMConfig

    def setup(self):
        c = self.config
        dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        self.embed_tokens = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")
            ),
        )
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling)
        self.layers = decoder_layers(c, inv_freq)
        self.final_norm = RMSNorm(c.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = nn.Dense(
                c.vocab_size,
                use_bias=False,
                dtype=dtype,
                param_dtype=param_dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.normal(0.02), ("embed", "vocab")
                ),
            )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings (B, S, H) in the compute dtype, for mixing with audio embeddings."""
        return self.embed_tokens(input_ids)

    def __call__(
        self,
        input_ids=None,
        *,
        inputs_embeds=None,
        attention_mask=None,
        positions=None,
        cache=None,
        output_hidden_layers: Sequence[int] = (),
        return_logits: bool = True,
    ) -> dict:
        """Runs the decoder.

        input_ids (B, S) int or inputs_embeds (B, S, H); attention_mask (B, S), 1 = real token
        (left or right padding); positions (B, S) default to the count of real tokens before
        each one (continuing from the cache). With `cache` (from `init_cache`) the new tokens
        are appended to it and attend to everything cached.

        Returns {"logits": (B, S, V) float32 or None, "hidden": final-normed last hidden state,
        "hidden_states": {i: residual stream after i layers, for each requested i (0 =
        embeddings, num_layers = before the final norm; a negative request -k is keyed
        num_layers + 1 - k, as indices into HF's hidden_states tuple)}, "cache": updated cache
        or None}.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            x = inputs_embeds.astype(jnp.dtype(self.config.dtype))
        else:
            x = self.embed(input_ids)
        b, s = x.shape[:2]
        token_mask = (
            jnp.ones((b, s), bool) if attention_mask is None else attention_mask.astype(bool)
        )
        mask, positions, cache = attention_layout(token_mask, positions, cache)
        wanted = _layer_indices(output_hidden_layers, self.config.num_layers)
        x, hidden_states, cache = run_layers(self.layers, x, positions, mask, cache, wanted)
        hidden = self.final_norm(x)
        logits = self.logits(hidden) if return_logits else None
        return {
            "logits": logits,
            "hidden": hidden,
            "hidden_states": {k: hidden_states[k] for k in sorted(hidden_states)},
            "cache": cache,
        }

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits of final-normed hidden states (for a slice of the sequence only)."""
        if self.config.tie_word_embeddings:
            logits = self.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return logits.astype(jnp.float32)


def run_layers(layers, x, positions, mask, cache, wanted=frozenset()):
    """Applies decoder layers in order (a list, or one scanned module from `decoder_layers`),
    with the KV cache when given.

    Returns (x, {i: residual stream after i layers for i in wanted}, updated cache or None).
    Scanned layers give the hidden states after 0 and after all layers only.
    """
    hidden_states = {i: x for i in wanted if i == 0}
    if not isinstance(layers, (list, tuple)):
        inner = sorted(i for i in wanted if i not in (0, layers.config.num_layers))
        if inner:
            raise ValueError(
                f"hidden states after layers {inner} need scan_layers=False (scanned layers "
                "give those after 0 and after all layers)"
            )
        kv = None if cache is None else (cache["k"], cache["v"])
        x, kv = layers(x, positions, mask, kv, None if cache is None else cache["length"])
        hidden_states |= {i: x for i in wanted if i != 0}
        if cache is not None:
            cache = {**cache, "k": kv[0], "v": kv[1], "length": cache["length"] + x.shape[1]}
        return x, hidden_states, cache
    new_k, new_v = [], []
    for i, layer in enumerate(layers):
        kv = None if cache is None else (cache["k"][i], cache["v"][i])
        x, kv = layer(x, positions, mask, kv, None if cache is None else cache["length"])
        if kv is not None:
            new_k.append(kv[0])
            new_v.append(kv[1])
        if i + 1 in wanted:
            hidden_states[i + 1] = x
    if cache is not None:
        cache = {**cache, "k": new_k, "v": new_v, "length": cache["length"] + x.shape[1]}
    return x, hidden_states, cache


def stack_layer_params(tree: dict, num_layers: int, name: str = "layers") -> dict:
    """{name_0: p0, ..., name_{L-1}: p} -> {name: stacked}: per-layer parameters (the layout
    of scan_layers=False) in the layout of scan_layers=True. Other keys are kept."""
    keys = [f"{name}_{i}" for i in range(num_layers)]
    missing = [k for k in keys if k not in tree]
    if missing:
        raise KeyError(f"no per-layer parameters {missing[:3]} to stack")
    out = {k: v for k, v in tree.items() if k not in keys}
    out[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *(tree[k] for k in keys))
    return out


def unstack_layer_params(tree: dict, name: str = "layers") -> dict:
    """The inverse of `stack_layer_params`: {name: stacked} -> {name_0: ..., name_{L-1}: ...}."""
    stacked = tree[name]
    count = jax.tree.leaves(stacked)[0].shape[0]
    out = {k: v for k, v in tree.items() if k != name}
    for i in range(count):
        out[f"{name}_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return out


def _layer_indices(requested: Sequence[int], num_layers: int) -> set[int]:
    out = set()
    for i in requested:
        j = i + num_layers + 1 if i < 0 else i
        if not 0 <= j <= num_layers:
            raise ValueError(f"hidden layer {i} out of range for {num_layers} layers")
        out.add(j)
    return out


def attention_layout(token_mask, positions, cache):
    """Attention mask (B, S, T), rotary positions (B, S) and the cache with its bookkeeping."""
    b, s = token_mask.shape
    next_pos = jnp.zeros((b,), jnp.int32) if cache is None else cache["next_pos"]
    if positions is None:
        counted = jnp.cumsum(token_mask, axis=1, dtype=jnp.int32) - 1
        positions = next_pos[:, None] + jnp.maximum(counted, 0)
    if cache is None:
        key_valid, start, total = token_mask, 0, s
    else:
        start, total = cache["length"], cache["valid"].shape[1]
        key_valid = jax.lax.dynamic_update_slice(cache["valid"], token_mask, (0, start))
        cache = {
            **cache,
            "valid": key_valid,
            "next_pos": next_pos + token_mask.sum(axis=1, dtype=jnp.int32),
        }
    q_slot = start + jnp.arange(s)
    causal = jnp.arange(total)[None, :] <= q_slot[:, None]
    return causal[None] & key_valid[:, None, :], positions, cache


def llm_shardings(config: LLMConfig, mesh: Mesh):
    """NamedSharding tree matching the unboxed parameter tree {"params": ...} of `LLM`."""
    return parallel.shardings_of(abstract_params(config), mesh)


def abstract_params(config: LLMConfig):
    """Boxed abstract parameter tree (shapes, dtypes and logical names), no allocation."""
    return jax.eval_shape(lambda: LLM(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))


@functools.partial(jax.jit, static_argnames=("config",))
def _prefill(params, config: LLMConfig, ids, cache):
    out = LLM(config).apply(params, ids, cache=cache)
    return jnp.argmax(out["logits"][:, -1], axis=-1), out["cache"]


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("cache",))
def decode_step(params, config: LLMConfig, token, cache):
    out = LLM(config).apply(params, token[:, None], cache=cache)
    return jnp.argmax(out["logits"][:, -1], axis=-1), out["cache"]


def greedy_ids(
    params,
    config: LLMConfig,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_id: int | None = None,
) -> list[int]:
    """Greedy continuation (token ids) of one prompt with the KV cache; stops at eos."""
    ids = jnp.asarray([list(prompt_ids)], jnp.int32)
    cache = init_cache(config, 1, len(prompt_ids) + max_new_tokens)
    token, cache = _prefill(params, config, ids, cache)
    out: list[int] = []
    for _ in range(max_new_tokens):
        value = int(token[0])  # also waits for the step (multi-device CPU needs it)
        out.append(value)
        if value == eos_id or len(out) == max_new_tokens:
            break
        token, cache = decode_step(params, config, token, cache)
    return out


def greedy_generate(params, config: LLMConfig, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy text continuation of `prompt` (no bos added, as for plain prompts)."""
    new = greedy_ids(params, config, tokenizer.encode(prompt), max_new_tokens, tokenizer.eos_id)
    return tokenizer.decode(new)
