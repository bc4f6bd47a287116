"""Which file tensor fills which LLM parameter, and how it is reshaped.

One table (`tensor_plan`) names every parameter of `LLM` with its Hugging Face and GGUF tensor
names. File tensors are in the PyTorch layout (out, in); `to_param` turns one into the Flax
layout after checking its shape and dtype, so a bad file stops with the tensor's name.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from f3_jax.errors import ModelFileError
from f3_jax.models.llm import LLMConfig


class LLMLoadError(ModelFileError, ValueError):
    """A weights file that does not fit the model; the message names the file and tensor."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    path: tuple[str, ...]  # key path in the {"params": ...} tree
    hf: str
    gguf: str
    shape: tuple[int, ...]  # Flax parameter shape
    n_in: int | None  # kernels: how many leading Flax dims are inputs; None: not a kernel


def tensor_plan(c: LLMConfig) -> list[TensorSpec]:
    """Every parameter of `LLM(c)` with its names in HF safetensors and in GGUF."""
    h, hd = c.hidden_size, c.head_dim
    plan = [
        TensorSpec(
            ("params", "embed_tokens", "embedding"),
            "model.embed_tokens.weight",
            "token_embd.weight",
            (c.vocab_size, h),
            None,
        )
    ]
    for i in range(c.num_layers):
        plan += _layer_plan(c, i, h, hd)
    plan.append(
        TensorSpec(
            ("params", "final_norm", "scale"), "model.norm.weight", "output_norm.weight", (h,), None
        )
    )
    if not c.tie_word_embeddings:
        plan.append(
            TensorSpec(
                ("params", "lm_head", "kernel"),
                "lm_head.weight",
                "output.weight",
                (h, c.vocab_size),
                1,
            )
        )
    return plan


def _layer_plan(c: LLMConfig, i: int, h: int, hd: int) -> list[TensorSpec]:
    """Layer i's tensors: (Flax path, HF name, GGUF name, Flax shape, input dims or None)."""
    hf, gg, p = f"model.layers.{i}.", f"blk.{i}.", ("params", f"layers_{i}")
    attn = (*p, "attn")
    rows = [
        ((*p, "attn_norm", "scale"), "input_layernorm.weight", "attn_norm.weight", (h,), None),
        ((*p, "mlp_norm", "scale"), "post_attention_layernorm.weight", "ffn_norm.weight",
         (h,), None),
        ((*attn, "o_proj", "kernel"), "self_attn.o_proj.weight", "attn_output.weight",
         (c.num_heads, hd, h), 2),
    ]  # fmt: skip
    for name, n in (("q", c.num_heads), ("k", c.num_kv_heads), ("v", c.num_kv_heads)):
        rows.append(((*attn, f"{name}_proj", "kernel"), f"self_attn.{name}_proj.weight",
                     f"attn_{name}.weight", (h, n, hd), 1))  # fmt: skip
        if c.attention_bias:
            rows.append(((*attn, f"{name}_proj", "bias"), f"self_attn.{name}_proj.bias",
                         f"attn_{name}.bias", (n, hd), None))  # fmt: skip
    if c.attention_out_bias:
        rows.append(((*attn, "o_proj", "bias"), "self_attn.o_proj.bias", "attn_output.bias",
                     (h,), None))  # fmt: skip
    if c.qk_norm:
        for name in ("q", "k"):
            rows.append(((*attn, f"{name}_norm", "scale"), f"self_attn.{name}_norm.weight",
                         f"attn_{name}_norm.weight", (hd,), None))  # fmt: skip
    for name, gname, shape in (
        ("gate", "ffn_gate", (h, c.intermediate_size)),
        ("up", "ffn_up", (h, c.intermediate_size)),
        ("down", "ffn_down", (c.intermediate_size, h)),
    ):
        rows.append(((*p, "mlp", f"{name}_proj", "kernel"), f"mlp.{name}_proj.weight",
                     f"{gname}.weight", shape, 1))  # fmt: skip
    return [TensorSpec(path, hf + hf_name, gg + gg_name, shape, n_in)
            for path, hf_name, gg_name, shape, n_in in rows]  # fmt: skip


def file_shape(spec: TensorSpec) -> tuple[int, ...]:
    """Shape the tensor has in the file (PyTorch layout: kernels are (out, in), flattened)."""
    if spec.n_in is None:
        return (
            spec.shape
            if len(spec.shape) == 2 and spec.path[-1] == "embedding"
            else (int(np.prod(spec.shape)),)
        )
    n_out = int(np.prod(spec.shape[spec.n_in :]))
    return (n_out, int(np.prod(spec.shape[: spec.n_in])))


def to_param(
    array: np.ndarray, file: str, *, spec: TensorSpec, name: str, dtype: str
) -> np.ndarray:
    """File tensor -> Flax parameter of `dtype`; stops with a message naming the tensor."""
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise LLMLoadError(
            f"{file}: tensor {name!r} has dtype {array.dtype}, expected a floating-point type"
        )
    expected = file_shape(spec)
    if tuple(array.shape) != expected:
        raise LLMLoadError(
            f"{file}: tensor {name!r} has shape {tuple(array.shape)}, expected "
            f"{expected} for parameter {'/'.join(spec.path[1:])}"
        )
    if spec.n_in is not None:
        array = array.T
    return np.asarray(array.reshape(spec.shape), dtype=jnp.dtype(dtype))
