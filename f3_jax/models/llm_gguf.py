"""Reading a Llama-family GGUF file: config, byte-level BPE tokenizer and tensors.

Tensors come back dequantized (gguf.quants.dequantize) in the PyTorch layout (out, in).
llama.cpp's converter permutes the rows of Q and K inside each head of "llama" models (for
interleaved rotary pairs); `tensor` undoes that so the rotate-half rotary of `LLM` applies.
"""

from __future__ import annotations

import gguf
import numpy as np

from f3_jax.models.llm import LLMConfig
from f3_jax.models.llm_checkpoint_map import LLMLoadError
from f3_jax.models.text_tokenizer import TextTokenizer, byte_level_bpe

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")
_PLAIN_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)


class _PlainViewReader(gguf.GGUFReader):
    """GGUFReader over a plain ndarray view of its memory map.

    Same bytes, still memory-mapped, but slicing skips np.memmap's per-slice Python overhead,
    which dominates parsing a 50k-token vocabulary (about 2x faster loading of SmolLM2).
    """

    @property
    def data(self) -> np.ndarray:
        return self._plain_data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._plain_data = value.view(np.ndarray)


class GGUFFile:
    """One open GGUF file (memory-mapped)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.reader = _PlainViewReader(path)
        except Exception as e:  # the gguf package raises bare ValueErrors on bad headers
            raise LLMLoadError(
                f"{path}: not a readable GGUF file, truncated or corrupt ({e})"
            ) from e
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch = self.field("general.architecture")
        if self.arch not in SUPPORTED_ARCHS:
            raise LLMLoadError(
                f"{path}: architecture {self.arch!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHS)})"
            )

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def arch_field(self, key: str, default=None):
        value = self.field(f"{self.arch}.{key}", default)
        if value is None:
            raise LLMLoadError(f"{self.path}: metadata {self.arch}.{key} is missing")
        return value

    def config(self, dtype: str = "float32") -> LLMConfig:
        heads = int(self.arch_field("attention.head_count"))
        hidden = int(self.arch_field("embedding_length"))
        head_dim = int(self.arch_field("attention.key_length", hidden // heads))
        vocab = self.field(f"{self.arch}.vocab_size") or len(self.field("tokenizer.ggml.tokens"))
        scaling = None
        if "rope_freqs.weight" in self.tensors:
            scaling = {"freq_factors": tuple(float(x) for x in self.raw("rope_freqs.weight"))}
        return LLMConfig(
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(self.arch_field("feed_forward_length")),
            num_layers=int(self.arch_field("block_count")),
            num_heads=heads,
            num_kv_heads=int(self.arch_field("attention.head_count_kv", heads)),
            head_dim=head_dim,
            rope_theta=_f32(self.arch_field("rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            rms_norm_eps=_f32(self.arch_field("attention.layer_norm_rms_epsilon")),
            tie_word_embeddings="output.weight" not in self.tensors,
            attention_bias="blk.0.attn_q.bias" in self.tensors,
            attention_out_bias="blk.0.attn_output.bias" in self.tensors,
            qk_norm="blk.0.attn_q_norm.weight" in self.tensors,
            max_position_embeddings=int(self.arch_field("context_length", 2048)),
            bos_token_id=_opt_int(self.field("tokenizer.ggml.bos_token_id")),
            eos_token_id=_opt_int(self.field("tokenizer.ggml.eos_token_id")),
            dtype=dtype,
        )

    def tokenizer(self) -> TextTokenizer:
        model = self.field("tokenizer.ggml.model")
        if model != "gpt2":
            raise LLMLoadError(
                f"{self.path}: tokenizer model {model!r} is not supported "
                "(only GPT-2 style byte-level BPE, tokenizer.ggml.model = gpt2)"
            )
        tokens = self.field("tokenizer.ggml.tokens")
        merges = self.field("tokenizer.ggml.merges")
        if tokens is None or merges is None:
            raise LLMLoadError(f"{self.path}: tokenizer.ggml.tokens or .merges is missing")
        tok = byte_level_bpe(
            tokens,
            merges,
            self.field("tokenizer.ggml.token_type"),
            pre=self.field("tokenizer.ggml.pre", "gpt2"),
        )
        return TextTokenizer(
            tok,
            bos_id=_opt_int(self.field("tokenizer.ggml.bos_token_id")),
            eos_id=_opt_int(self.field("tokenizer.ggml.eos_token_id")),
            pad_id=_opt_int(self.field("tokenizer.ggml.padding_token_id")),
        )

    def names(self) -> set[str]:
        # rope_freqs is read into the config, not a parameter.
        return set(self.tensors) - {"rope_freqs.weight"}

    def raw(self, name: str) -> np.ndarray:
        """Dequantized tensor in the file's row order, shape (out, in) / (n,)."""
        t = self.tensors[name]
        if t.tensor_type in _PLAIN_TYPES:
            return np.asarray(t.data)
        try:
            return gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise LLMLoadError(
                f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, "
                "which gguf.quants cannot dequantize"
            ) from e

    def tensor(self, name: str) -> np.ndarray:
        """Dequantized tensor in the Hugging Face layout (Q/K rows un-permuted for llama)."""
        array = self.raw(name)
        if self.arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k"):
            key = (
                "attention.head_count"
                if name.split(".")[-2] == "attn_q"
                else ("attention.head_count_kv")
            )
            array = unpermute_rows(array, int(self.arch_field(key)))
        return array


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation (interleaved -> rotate-half pairs)."""
    head_dim = w.shape[0] // n_head
    rest = w.shape[1:]
    return w.reshape(n_head, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (rotate-half -> interleaved pairs); used to write test files."""
    head_dim = w.shape[0] // n_head
    rest = w.shape[1:]
    return w.reshape(n_head, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _f32(value) -> float:
    """GGUF stores floats as float32: 1e-5 reads back as 9.99999974e-06; print it back short."""
    return float(f"{np.float32(value):.7g}")


def _opt_int(value) -> int | None:
    return None if value is None else int(value)
