"""A tiny random Llama-family model written in the on-disk formats the loaders read.

`write_hf_dir` (benchmarks/random_llm.py) writes config.json + safetensors (optionally
sharded with an index) + tokenizer.json; `write_gguf` writes a GGUF file with the same tensors
(Q/K rows permuted as llama.cpp does for "llama", chosen tensors Q8_0-quantized) and the
tokenizer in its metadata.
"""

from __future__ import annotations

import dataclasses

import gguf
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.random_llm import (  # noqa: F401 (re-exported for the tests)
    MERGES,
    SPECIALS,
    hf_config_dict,
    hf_tensors,
    tiny_tokenizer,
    tiny_tokens,
    write_hf_dir,
)
from benchmarks.random_llm import random_params as _random_params
from f3_jax.models.llm import LLMConfig
from f3_jax.models.llm_checkpoint_map import tensor_plan
from f3_jax.models.llm_gguf import permute_rows


def tiny_config(**overrides) -> LLMConfig:
    base = LLMConfig(
        vocab_size=len(tiny_tokens()[0]),
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    return dataclasses.replace(base, **overrides)


def random_params(config: LLMConfig, seed: int = 0) -> dict:
    """Unboxed {"params": ...} of jax arrays, every leaf random (norm scales around 1)."""
    return jax.tree.map(jnp.asarray, _random_params(config, seed))


def write_gguf(
    path: str,
    config: LLMConfig,
    params: dict,
    arch: str = "llama",
    quantize: tuple[str, ...] = (),
    tensors: dict | None = None,
) -> str:
    """GGUF file of the tiny model; names in `quantize` (GGUF names) are stored as Q8_0."""
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(config.num_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    tokens, merges, types = tiny_tokens()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(config.bos_token_id)
    w.add_eos_token_id(config.eos_token_id)
    for name, value in (gguf_tensors(config, params, arch) if tensors is None else tensors).items():
        if name in quantize:
            q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_tensors(config: LLMConfig, params: dict, arch: str = "llama") -> dict[str, np.ndarray]:
    hf = hf_tensors(config, params)
    out = {}
    for spec in tensor_plan(config):
        value = hf[spec.hf]
        kind = spec.gguf.split(".")[-2]
        if arch == "llama" and kind in ("attn_q", "attn_k"):
            heads = config.num_heads if kind == "attn_q" else config.num_kv_heads
            value = np.ascontiguousarray(permute_rows(value, heads))
        out[spec.gguf] = value
    return out
