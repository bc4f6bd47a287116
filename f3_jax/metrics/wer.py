"""Word error rate with text normalization (jiwer).

Both sides are normalized before scoring (lowercase, apostrophes dropped, other punctuation made
a space, whitespace collapsed) so that "Hello, World." and "hello world" match exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jiwer
import numpy as np

_PUNCT = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lowercase, drop apostrophes ("don't" -> "dont"), punctuation -> space, collapse spaces."""
    text = text.casefold().replace("'", "").replace("\u2019", "")
    return _SPACES.sub(" ", _PUNCT.sub(" ", text)).strip()


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: (substitutions + deletions + insertions) / reference words, after normalizing.

    An empty reference adds its hypothesis' words as insertions. NaN when no reference has words.
    """
    refs, hyps = _normalized(references, hypotheses)
    if not any(refs):
        return float("nan")
    return float(jiwer.process_words(refs, hyps).wer)


def utterance_word_error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """WER of each pair (N,) float64, after normalizing; NaN where the reference has no words."""
    refs, hyps = _normalized(references, hypotheses)
    return np.asarray(
        [float(jiwer.wer(r, h)) if r else float("nan") for r, h in zip(refs, hyps)],
        dtype=np.float64,
    )


def _normalized(references, hypotheses) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references for {len(hypotheses)} hypotheses")
    return [normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses]
