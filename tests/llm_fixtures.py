"""A tiny random Llama-family model written in the on-disk formats the loaders read.

`write_hf_dir` writes config.json + safetensors (optionally sharded with an index) +
tokenizer.json; `write_gguf` writes a GGUF file with the same tensors (Q/K rows permuted as
llama.cpp does for "llama", chosen tensors Q8_0-quantized) and the tokenizer in its metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import gguf
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file
from tokenizers import pre_tokenizers

from f3_jax.models.llm import LLMConfig, abstract_params
from f3_jax.models.llm_checkpoint_map import file_shape, tensor_plan
from f3_jax.models.llm_gguf import permute_rows
from f3_jax.models.text_tokenizer import TextTokenizer, byte_level_bpe

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n", "Ġ a"]


def tiny_tokens() -> tuple[list[str], list[str], list[int]]:
    """Vocabulary (3 specials, 256 byte symbols, merged pieces), merges, GGUF token types."""
    merged = [m.replace(" ", "") for m in MERGES]
    tokens = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + merged
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, MERGES, types


def tiny_tokenizer() -> TextTokenizer:
    tokens, merges, types = tiny_tokens()
    return TextTokenizer(byte_level_bpe(tokens, merges, types), bos_id=1, eos_id=2)


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
    """Unboxed {"params": ...} with every leaf random (norm scales around 1, biases nonzero)."""
    params = nn.unbox(abstract_params(config))  # shapes only: RNG init compiles slowly on CPU
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        noise = rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
        out.append(jnp.asarray(noise + (1.0 if path[-1].key == "scale" else 0.0)))
    return jax.tree_util.tree_unflatten(treedef, out)


def hf_tensors(config: LLMConfig, params: dict) -> dict[str, np.ndarray]:
    """Parameters in the Hugging Face (PyTorch) layout, keyed by HF tensor name."""
    out = {}
    for spec in tensor_plan(config):
        value = np.asarray(_get(params, spec.path), np.float32)
        if spec.n_in is not None:
            n_in = int(np.prod(spec.shape[: spec.n_in]))
            value = value.reshape(n_in, -1).T
        out[spec.hf] = np.ascontiguousarray(value.reshape(file_shape(spec)))
    return out


def hf_config_dict(config: LLMConfig, model_type: str = "llama") -> dict:
    return {
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rope_theta": config.rope_theta,
        "rope_scaling": (
            {"rope_type": "llama3", **config.rope_scaling} if config.rope_scaling else None
        ),
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias if model_type != "qwen2" else True,
        "max_position_embeddings": config.max_position_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
    }


def write_hf_dir(
    directory: str,
    config: LLMConfig,
    params: dict,
    model_type: str = "llama",
    shards: int = 1,
    tensors: dict | None = None,
) -> str:
    """HF model directory; `tensors` overrides the tensors written (for corruption tests)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config_dict(config, model_type), f)
    tiny_tokenizer().save(os.path.join(directory, "tokenizer.json"))
    tensors = hf_tensors(config, params) if tensors is None else tensors
    if shards == 1:
        save_file(tensors, os.path.join(directory, "model.safetensors"))
        return directory
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, os.path.join(directory, file))
        weight_map.update(dict.fromkeys(part, file))
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return directory


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


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree
