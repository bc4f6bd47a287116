"""Reading and writing audio files: any common format in, float32 mono at a fixed rate out.

soundfile (libsndfile) reads wav, flac, ogg and, with libsndfile >= 1.1, mp3; librosa (audioread)
is the fallback for what libsndfile cannot open. Resampling uses soxr at its default quality, so
that tests can compare against `soxr.resample` directly.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import soundfile as sf
import soxr

from f3_jax.data.errors import AudioDecodeError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def _read_any(path: str) -> tuple[np.ndarray, int]:
    """Returns (frames, channels) float32 and the file's sample rate."""
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
        return wav, int(sr)
    except Exception as sf_error:  # libsndfile cannot open it: try librosa's backends
        try:
            import librosa  # lazy: its import takes seconds and most files never need it

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "PySoundFile failed", audioread deprecation
                wav, sr = librosa.load(path, sr=None, mono=False)
        except Exception as lr_error:
            why = str(lr_error) or type(lr_error).__name__
            raise AudioDecodeError(
                f"cannot decode {path}: soundfile: {sf_error}; librosa: {why}"
            ) from lr_error
        wav = np.asarray(wav, dtype=np.float32)
        wav = wav[:, None] if wav.ndim == 1 else wav.T
        return wav, int(sr)


def resample(wav: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """soxr resampling of a 1-D float32 signal; a no-op when the rates agree."""
    if from_rate == to_rate:
        return wav
    return soxr.resample(wav, from_rate, to_rate).astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decodes `path` to float32 mono at `sample_rate`.

    Raises AudioDecodeError for a file that cannot be decoded, holds no samples, or holds
    NaN/Inf, so that callers can skip it and say why.
    """
    path = os.fspath(path)
    wav, sr = _read_any(path)
    if wav.size == 0:
        raise AudioDecodeError(f"empty audio (0 samples): {path}")
    mono = wav.mean(axis=1, dtype=np.float32) if wav.shape[1] > 1 else wav[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError(f"audio holds NaN or Inf: {path}")
    return np.ascontiguousarray(resample(mono, sr, sample_rate), dtype=np.float32)


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> None:
    """Writes float32 audio in [-1, 1] (mono (L,) or (L, C)); the format follows the suffix."""
    path = os.fspath(path)
    subtype = "PCM_16" if path.lower().endswith((".wav", ".flac")) else None
    sf.write(
        path, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sample_rate, subtype=subtype
    )
