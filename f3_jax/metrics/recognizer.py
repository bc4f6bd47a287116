"""Offline English speech recognition (pocketsphinx) and word error rate (jiwer).

pocketsphinx 5 with its bundled US English acoustic model, language model and dictionary needs
no download. Its WER on clean synthetic speech is high (about 0.37 on piper's voice), so an
evaluation should report the WER of reconstructed audio relative to the WER of the original
audio over many utterances, never as an absolute intelligibility score.

Both sides are normalized before scoring (lowercase, apostrophes dropped, other punctuation made
a space, whitespace collapsed) so that "Hello, World." and "hello world" match exactly.

An all-zero clip transcribes to '' without decoding: pocketsphinx returns a word or two for
digital silence. `transcribe` returns None (skipped) for a clip it has nothing to recognize in
(all zeros, or shorter than MIN_SECONDS) and for a clip the decoder raises on; evaluations leave
an utterance out of a WER when its original audio is skipped, and count it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from f3_jax.data.audio_io import resample
from f3_jax.metrics.intelligibility import Waves, unpad
from f3_jax.metrics.wer import normalize_text, utterance_word_error_rates, word_error_rate

RECOGNIZER_RATE = 16000  # the bundled en-us acoustic model's rate
MIN_SECONDS = 0.1  # a shorter clip holds no word (and a few of the recognizer's 10 ms frames)

_log = logging.getLogger(__name__)


class Recognizer:
    """One pocketsphinx Decoder; not thread-safe, so give each thread its own."""

    def __init__(self) -> None:
        import pocketsphinx  # lazy: loading the models takes about half a second

        self._decoder = pocketsphinx.Decoder(loglevel="FATAL")  # its INFO log is very chatty

    def __call__(self, wav: np.ndarray, sample_rate: int) -> str:
        """float32 mono audio in [-1, 1] at any rate -> recognized words ('' for none)."""
        if not np.any(wav):
            return ""  # on digital silence pocketsphinx hallucinates words (its CMN has no signal)
        wav = resample(np.asarray(wav, dtype=np.float32), sample_rate, RECOGNIZER_RATE)
        pcm = np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2")
        self._decoder.start_utt()
        # full_utt: the whole clip is known, so cepstral mean normalization can use all of it.
        self._decoder.process_raw(pcm.tobytes(), full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def transcribe(
    wavs: Waves,
    sample_rate: int,
    num_threads: int = 2,
    *,
    lengths: Sequence[int] | np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> list[str | None]:
    """Transcripts of a batch (padded (N, L) with lengths/mask, or a list of 1-D clips), in order;
    None for a skipped clip (silent, shorter than MIN_SECONDS, or the decoder raised).

    Each worker thread builds its own Recognizer on first use and keeps it for the batch.
    """
    clips = unpad(wavs, lengths, mask)
    local = threading.local()

    def run(clip: np.ndarray) -> str | None:
        if clip.shape[0] < MIN_SECONDS * sample_rate or not clip.any():
            return None
        if not hasattr(local, "recognizer"):  # outside the try: a missing model is no skip
            local.recognizer = Recognizer()
        try:
            return local.recognizer(clip, sample_rate)
        except Exception as e:  # one clip's failure must not stop the evaluation
            _log.warning("recognizer skipped a clip: %s: %s", type(e).__name__, e)
            return None

    if num_threads <= 1 or len(clips) <= 1:
        return [run(c) for c in clips]
    with ThreadPoolExecutor(max_workers=min(num_threads, len(clips))) as pool:
        return list(pool.map(run, clips))


__all__ = [
    "MIN_SECONDS",
    "RECOGNIZER_RATE",
    "Recognizer",
    "normalize_text",
    "transcribe",
    "utterance_word_error_rates",
    "word_error_rate",
]
