"""Safetensors and GGUF loaders on the tiny random model: round trips and clear failures."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from f3_jax.llm_check import main as llm_main
from f3_jax.models.llm import stack_layer_params
from f3_jax.models.llm_checkpoint_map import LLMLoadError
from f3_jax.models.llm_loaders import load_llm
from tests.llm_fixtures import (
    gguf_tensors,
    hf_tensors,
    random_params,
    tiny_config,
    write_gguf,
    write_hf_dir,
)

ARCH_OPTIONS = {
    "llama": {},
    "qwen2": {"attention_bias": True, "tie_word_embeddings": False},
    "qwen3": {"qk_norm": True},
}


def _assert_same_params(loaded, params, atol=0.0):
    flat_a = jax.tree_util.tree_flatten_with_path(loaded)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    assert len(flat_a) == len(flat_b)
    for path, value in flat_a:
        np.testing.assert_allclose(value, flat_b[path], atol=atol, err_msg=str(path))


@pytest.mark.parametrize("arch", sorted(ARCH_OPTIONS))
def test_safetensors_round_trip(tmp_path, arch):
    config = tiny_config(**ARCH_OPTIONS[arch])
    params = random_params(config)
    directory = write_hf_dir(
        str(tmp_path / arch), config, params, model_type=arch, shards=2 if arch == "llama" else 1
    )
    loaded_config, loaded, tok = load_llm(directory)
    assert loaded_config == config
    _assert_same_params(loaded, params)
    assert tok.decode(tok.encode("the cat")) == "the cat"
    assert tok.bos_id == 1 and tok.eos_id == 2


@pytest.mark.parametrize("arch", sorted(ARCH_OPTIONS))
def test_gguf_round_trip(tmp_path, arch):
    config = tiny_config(**ARCH_OPTIONS[arch])
    params = random_params(config)
    path = write_gguf(str(tmp_path / "m.gguf"), config, params, arch=arch)
    loaded_config, loaded, tok = load_llm(path)
    assert loaded_config == config
    _assert_same_params(loaded, params)
    assert tok.encode("<|im_start|>")[0] == 1  # control tokens match as whole pieces
    assert tok.decode(tok.encode(" the an")) == " the an"


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_scan_layers_loads_the_layers_stacked(tmp_path, fmt):
    config = tiny_config(num_layers=3)
    params = random_params(config)
    if fmt == "hf":
        path = write_hf_dir(str(tmp_path / "hf"), config, params)
    else:
        path = write_gguf(str(tmp_path / "m.gguf"), config, params)
    loaded_config, loaded, _ = load_llm(path, scan_layers=True, remat="full")
    assert loaded_config == dataclasses.replace(config, scan_layers=True, remat="full")
    assert loaded["params"]["layers"]["mlp"]["up_proj"]["kernel"].shape == (3, 64, 128)
    _assert_same_params(loaded, {"params": stack_layer_params(params["params"], 3)}, atol=1e-6)


def test_gguf_quantized_tensor_is_dequantized(tmp_path):
    config = tiny_config()
    params = random_params(config)
    path = write_gguf(
        str(tmp_path / "q.gguf"),
        config,
        params,
        quantize=("blk.0.attn_q.weight", "blk.1.ffn_down.weight"),
    )
    _, loaded, _ = load_llm(path)
    # Q8_0 keeps ~8 bits per value: errors of about max|w| / 254 per block of 32.
    _assert_same_params(loaded, params, atol=2e-3)
    exact = loaded["params"]["layers_0"]["attn"]["k_proj"]["kernel"]
    np.testing.assert_array_equal(exact, params["params"]["layers_0"]["attn"]["k_proj"]["kernel"])


def test_hf_and_gguf_tokenizers_agree(tmp_path):
    config = tiny_config()
    params = random_params(config)
    _, _, hf_tok = load_llm(write_hf_dir(str(tmp_path / "hf"), config, params))
    _, _, gg_tok = load_llm(write_gguf(str(tmp_path / "m.gguf"), config, params))
    text = "the thin ant <|im_end|> 123"
    assert hf_tok.encode(text) == gg_tok.encode(text)
    assert hf_tok.vocab_size == gg_tok.vocab_size == config.vocab_size


def test_param_dtype_bfloat16(tmp_path):
    config = tiny_config()
    params = random_params(config)
    _, loaded, _ = load_llm(
        write_gguf(str(tmp_path / "m.gguf"), config, params), param_dtype="bfloat16"
    )
    assert {x.dtype.name for x in jax.tree.leaves(loaded)} == {"bfloat16"}


def _tensors_with(config, params, fmt, change):
    tensors = hf_tensors(config, params) if fmt == "hf" else gguf_tensors(config, params)
    change(tensors)
    return tensors


def _write(tmp_path, fmt, config, params, tensors):
    if fmt == "hf":
        return write_hf_dir(str(tmp_path / "bad"), config, params, tensors=tensors)
    return write_gguf(str(tmp_path / "bad.gguf"), config, params, tensors=tensors)


NAMES = {"hf": "model.layers.1.mlp.up_proj.weight", "gguf": "blk.1.ffn_up.weight"}


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_missing_tensor_is_named(tmp_path, fmt):
    config, params = tiny_config(), random_params(tiny_config())
    tensors = _tensors_with(config, params, fmt, lambda t: t.pop(NAMES[fmt]))
    with pytest.raises(LLMLoadError, match=f"missing tensor.*{NAMES[fmt]}"):
        load_llm(_write(tmp_path, fmt, config, params, tensors))


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_unexpected_tensor_is_named(tmp_path, fmt):
    config, params = tiny_config(), random_params(tiny_config())
    tensors = _tensors_with(
        config, params, fmt, lambda t: t.update({"extra.weight": np.zeros(3, np.float32)})
    )
    with pytest.raises(LLMLoadError, match="unexpected tensor.*extra.weight"):
        load_llm(_write(tmp_path, fmt, config, params, tensors))


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_wrong_shape_is_named(tmp_path, fmt):
    config, params = tiny_config(), random_params(tiny_config())
    name = NAMES[fmt]
    tensors = _tensors_with(
        config, params, fmt, lambda t: t.update({name: np.ascontiguousarray(t[name][:, :-1])})
    )
    with pytest.raises(LLMLoadError, match=f"{name}.*has shape"):
        load_llm(_write(tmp_path, fmt, config, params, tensors))


def test_wrong_dtype_is_named(tmp_path):
    config, params = tiny_config(), random_params(tiny_config())
    name = NAMES["hf"]
    tensors = _tensors_with(
        config, params, "hf", lambda t: t.update({name: t[name].astype(np.int32)})
    )
    with pytest.raises(LLMLoadError, match=f"{name}.*dtype int32"):
        load_llm(_write(tmp_path, "hf", config, params, tensors))


def test_config_mismatch_names_tensor(tmp_path):
    """A config.json that disagrees with the tensors (wrong intermediate size)."""
    config, params = tiny_config(), random_params(tiny_config())
    directory = write_hf_dir(str(tmp_path / "hf"), config, params)
    with open(os.path.join(directory, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 96
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    expected = "model.safetensors: tensor .model.layers.0.mlp.gate_proj.weight. has shape"
    with pytest.raises(LLMLoadError, match=expected):
        load_llm(directory)


def test_corrupt_files_fail_clearly(tmp_path):
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(LLMLoadError, match="junk.gguf"):
        load_llm(str(bad))
    config, params = tiny_config(), random_params(tiny_config())
    directory = write_hf_dir(str(tmp_path / "hf"), config, params)
    with open(os.path.join(directory, "model.safetensors"), "r+b") as f:
        f.truncate(2000)
    with pytest.raises(LLMLoadError, match="model.safetensors"):
        load_llm(directory)
    with pytest.raises(FileNotFoundError, match="no LLM weights"):
        load_llm(str(tmp_path / "nowhere"))


def test_check_tool_prints_continuation_and_load_time(tmp_path, capsys):
    config = tiny_config()
    directory = write_hf_dir(str(tmp_path / "hf"), config, random_params(config))
    llm_main(["--weights", directory, "--prompt", "the", "--max_new_tokens", "1"])
    out = capsys.readouterr().out
    assert out.startswith("the") and "load time:" in out
