"""Per-record transforms: random training crops and whole-utterance eval clips, with masks.

A record that cannot be decoded (or is shorter than data.min_crop_fraction of a crop) becomes a
`SKIPPED` marker instead of raising, so that one bad record never stops training; the batcher
drops and counts it (see batching.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from f3_jax.data.audio_io import resample
from f3_jax.data.errors import AudioDecodeError
from f3_jax.data.records import Utterance

SKIPPED = "skipped"  # key of the marker element


def _read_at_rate(u: Utterance, sample_rate: int, start: int, length: int) -> np.ndarray:
    """Samples [start, start+length) at `sample_rate`, resampling a clip stored at another rate."""
    if u.sample_rate == sample_rate:
        return u.read(start, length)
    wav = resample(u.read(), u.sample_rate, sample_rate)  # slow path: whole clip
    return wav[start : start + length]


def num_samples_at(u: Utterance, sample_rate: int) -> int:
    return int(u.num_samples * sample_rate // u.sample_rate)


@dataclasses.dataclass(frozen=True)
class RandomCrop:
    """grain random_map transform: raw record -> {"audio", "mask", "text", "id"} crop."""

    parse: Callable[[Any], Utterance]
    sample_rate: int
    crop_len: int
    min_len: int  # shorter clips are dropped
    gain_db: tuple[float, float]
    from_start: bool = False  # data.crop_mode == "utterance": no random offset

    def __call__(self, raw: Any, rng: np.random.Generator) -> dict:
        try:
            u = self.parse(raw)
            n = num_samples_at(u, self.sample_rate)
            if n == 0 or n < self.min_len:
                return {SKIPPED: True}
            cut = n > self.crop_len
            random_start = cut and not self.from_start
            start = int(rng.integers(0, n - self.crop_len + 1)) if random_start else 0
            wav = _read_at_rate(u, self.sample_rate, start, min(n, self.crop_len))
        except AudioDecodeError:
            return {SKIPPED: True}
        # A crop of part of a clip no longer matches its transcript: drop the text then.
        text = "" if cut else u.text
        audio, mask = pad_to(wav, self.crop_len)
        lo, hi = self.gain_db
        if lo != 0.0 or hi != 0.0:
            gain = np.float32(10.0 ** (rng.uniform(lo, hi) / 20.0))
            audio = np.clip(audio * gain, -1.0, 1.0)
        return {"audio": audio, "mask": mask, "text": text, "id": u.uid}


def pad_to(wav: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pads (or cuts) to `length`; the mask is 1 over real samples."""
    n = min(wav.shape[0], length)
    audio = np.zeros(length, np.float32)
    audio[:n] = wav[:n]
    mask = np.zeros(length, np.float32)
    mask[:n] = 1.0
    return audio, mask


def eval_clip(u: Utterance, sample_rate: int, max_len: int) -> np.ndarray:
    """The utterance from its start, at most max_len samples (deterministic)."""
    n = min(num_samples_at(u, sample_rate), max_len)
    return _read_at_rate(u, sample_rate, 0, n)
