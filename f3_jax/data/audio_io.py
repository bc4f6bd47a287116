"""Reading and writing audio files: any common format in, float32 mono at a fixed rate out.

soundfile (libsndfile) reads wav, flac, ogg and, with libsndfile >= 1.1, mp3; librosa (audioread)
is the fallback for what libsndfile cannot open. Resampling uses soxr at its default quality, so
that tests can compare against `soxr.resample` directly.

`audio_blocks` and `resample_blocks` read and resample a long file block by block, in memory
that does not grow with its duration; soxr's streaming resampler gives the same samples as
`soxr.resample` over the whole signal.

`read_audio` and `load_audio` also take URLs (gs://...: the file is fetched whole through
etils.epath) and `decode_audio` decodes bytes already in memory (a WebDataset tar member).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

from f3_jax.data import files
from f3_jax.data.errors import AudioDecodeError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def _librosa_load(source: str | bytes, name: str) -> tuple[np.ndarray, int]:
    import librosa  # lazy: its import takes seconds and most files never need it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "PySoundFile failed", audioread deprecation
        if isinstance(source, str):
            return librosa.load(source, sr=None, mono=False)
        # audioread's backends (ffmpeg, ...) read files only: bytes go through a temp file.
        with tempfile.NamedTemporaryFile(suffix=os.path.splitext(name)[1]) as f:
            f.write(source)
            f.flush()
            return librosa.load(f.name, sr=None, mono=False)


def _read_any(source: str | bytes, name: str | None = None) -> tuple[np.ndarray, int]:
    """Returns (frames, channels) float32 and the sample rate of a file (path) or its bytes."""
    path = name or source
    try:
        fileobj = io.BytesIO(source) if isinstance(source, bytes) else source
        wav, sr = sf.read(fileobj, dtype="float32", always_2d=True)
        return wav, int(sr)
    except Exception as sf_error:  # libsndfile cannot open it: try librosa's backends
        try:
            wav, sr = _librosa_load(source, path)
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


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate) of `path`, at the file's own rate.

    Raises AudioDecodeError for a file that is missing, cannot be decoded, holds no samples,
    or holds NaN/Inf, so that callers can skip it and say why.
    """
    path = os.fspath(path)
    if files.is_remote(path):
        try:
            data = files.read_bytes(path)
        except FileNotFoundError:
            raise AudioDecodeError(f"no such file: {path}") from None
        return decode_audio(data, path)
    if not os.path.isfile(path):  # said plainly, rather than by both backends
        raise AudioDecodeError(f"no such file: {path}")
    return _checked_mono(*_read_any(path), path)


def decode_audio(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate) of an audio file's bytes; `name` (a path or a
    WebDataset key with its extension) is for messages and the fallback decoder's format.
    Errors as `read_audio`."""
    if not data:
        raise AudioDecodeError(f"empty file (0 bytes): {name}")
    return _checked_mono(*_read_any(data, name), name)


def _checked_mono(wav: np.ndarray, sr: int, path: str) -> tuple[np.ndarray, int]:
    if wav.size == 0:
        raise AudioDecodeError(f"empty audio (0 samples): {path}")
    mono = wav.mean(axis=1, dtype=np.float32) if wav.shape[1] > 1 else wav[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError(f"audio holds NaN or Inf: {path}")
    return np.ascontiguousarray(mono, dtype=np.float32), sr


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decodes `path` to float32 mono at `sample_rate` (errors as `read_audio`)."""
    mono, sr = read_audio(path)
    return np.ascontiguousarray(resample(mono, sr, sample_rate), dtype=np.float32)


def _mono(block: np.ndarray, path: str) -> np.ndarray:
    """(frames, channels) -> (frames,) float32, refusing NaN/Inf like `load_audio`."""
    mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError(f"audio holds NaN or Inf: {path}")
    return np.ascontiguousarray(mono, dtype=np.float32)


class AudioBlocks(NamedTuple):
    """An audio file opened for reading in blocks (`audio_blocks`)."""

    sample_rate: int
    frames: int  # samples per channel in the file
    blocks: Iterator[np.ndarray]  # float32 mono, consecutive


def audio_blocks(path: str | os.PathLike, block_frames: int = 1 << 16) -> AudioBlocks:
    """Opens `path` for reading in blocks of float32 mono samples at the file's rate.

    The file is opened here, so that a missing, undecodable or empty file raises
    AudioDecodeError before the caller writes anything; a block holding NaN/Inf raises it
    while iterating. libsndfile formats stream; the librosa fallback decodes the whole file
    first (its backends have no block reader), then hands it out in blocks.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):  # said plainly, rather than by both backends
        raise AudioDecodeError(f"no such file: {path}")
    try:
        f = sf.SoundFile(path)
    except Exception:  # not libsndfile's: the fallback decodes it whole, or says why not
        wav, sr = _read_any(path)
        if wav.size == 0:
            raise AudioDecodeError(f"empty audio (0 samples): {path}") from None
        blocks = (_mono(wav[i : i + block_frames], path) for i in range(0, len(wav), block_frames))
        return AudioBlocks(sr, len(wav), blocks)
    if f.frames == 0:
        f.close()
        raise AudioDecodeError(f"empty audio (0 samples): {path}")

    def read() -> Iterator[np.ndarray]:
        with f:
            for block in f.blocks(block_frames, dtype="float32", always_2d=True):
                yield _mono(block, path)

    return AudioBlocks(int(f.samplerate), int(f.frames), read())


def resample_blocks(
    blocks: Iterable[np.ndarray], from_rate: int, to_rate: int
) -> Iterator[np.ndarray]:
    """Streaming soxr resampling of consecutive 1-D float32 blocks; equal to `resample` of
    their concatenation. Passes the blocks through when the rates agree."""
    if from_rate == to_rate:
        yield from blocks
        return
    stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32")
    for block in blocks:
        out = stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32))
        if len(out):
            yield out
    tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)  # flushes the filter
    if len(tail):
        yield tail


def _subtype(path: str) -> str | None:
    return "PCM_16" if path.lower().endswith((".wav", ".flac")) else None


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> None:
    """Writes float32 audio in [-1, 1] (mono (L,) or (L, C)); the format follows the suffix."""
    path = os.fspath(path)
    wav = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    sf.write(path, wav, sample_rate, subtype=_subtype(path))


def audio_writer(path: str | os.PathLike, sample_rate: int) -> sf.SoundFile:
    """A mono file open for writing block by block, in `write_audio`'s format (16-bit PCM for
    .wav and .flac, else the suffix's default); clip blocks to [-1, 1] before writing them."""
    path = os.fspath(path)
    return sf.SoundFile(path, "w", sample_rate, 1, subtype=_subtype(path))
