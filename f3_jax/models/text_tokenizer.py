"""Text tokenizer of the frozen LLM: a thin wrapper over a `tokenizers.Tokenizer`.

Built either from a Hugging Face `tokenizer.json` or from the vocabulary and merges stored in a
GGUF file (GPT-2 style byte-level BPE, which covers SmolLM2, Llama 3 and Qwen2/3).
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

# llama.cpp's names for the pre-tokenizer regexes (tokenizer.ggml.pre) -> split pattern.
# "smollm" and "gpt2" use the GPT-2 regex of ByteLevel itself (smollm splits digits first).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_SPLIT_PATTERNS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}

# GGUF token types (gguf.TokenType): CONTROL and USER_DEFINED tokens are matched as whole pieces.
_SPECIAL_TOKEN_TYPES = (3, 4)


class TextTokenizer:
    """encode/decode plus the special ids the LLM stages need."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_id: int | None,
        eos_id: int | None,
        pad_id: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.bos_id = bos_id
        self.eos_id = eos_id
        # Padding positions are masked out, so any valid id works; eos is the usual choice.
        self.pad_id = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError("this tokenizer has no bos token")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, path: str) -> None:
        """Writes tokenizer.json (the special ids live in the model's config)."""
        self.tokenizer.save(path)

    @classmethod
    def from_file(
        cls, path: str, *, bos_id: int | None, eos_id: int | None, pad_id: int | None = None
    ) -> TextTokenizer:
        return cls(Tokenizer.from_file(path), bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)


def byte_level_bpe(
    tokens: Sequence[str],
    merges: Sequence[str],
    token_types: Sequence[int] | None = None,
    pre: str = "gpt2",
) -> Tokenizer:
    """A GPT-2 style byte-level BPE from a vocabulary list (id = index) and "a b" merge rules."""
    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    if token_types is not None:
        kinds = zip(tokens, token_types, strict=True)
        special = [t for t, kind in kinds if int(kind) in _SPECIAL_TOKEN_TYPES]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tok


def _pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in _SPLIT_PATTERNS:
        split = pre_tokenizers.Split(Regex(_SPLIT_PATTERNS[pre]), behavior="isolated")
        return pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    return byte_level
