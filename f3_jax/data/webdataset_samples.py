"""WebDataset samples: a tar sample -> an Utterance, and random access to a split's samples
(validation, tools) from one scan of the shards' headers.

A sample is a run of tar members sharing a key (data/tar_shards.py): its audio is the first
of the `flac`, `wav`, `mp3`, `opus`, `ogg` members; its transcript the `txt` member, else the
`text` field of a `json` member, whose other numeric fields become labels; its id the key.
FLAC and WAV crops are decoded by seeking (only the frames of the crop); other formats are
decoded whole. Training streams the shards instead (data/webdataset_source.py).
"""

from __future__ import annotations

import io
import json

import numpy as np
import soundfile as sf
from absl import logging

from f3_jax.data import files, records
from f3_jax.data.audio_io import decode_audio
from f3_jax.data.errors import AudioDecodeError, DataError
from f3_jax.data.sources import SplitSource
from f3_jax.data.tar_shards import SampleRef, TarError, iter_samples, read_sample, shard_paths

AUDIO_KEYS = ("flac", "wav", "mp3", "opus", "ogg")
_SEEKABLE = ("flac", "wav")  # libsndfile seeks these exactly: crops decode only what they need


# ---- one sample -> Utterance --------------------------------------------------------------


def _text_labels(sample: dict[str, bytes]) -> tuple[str, dict[str, float]]:
    text = sample["txt"].decode("utf-8").strip() if "txt" in sample else ""
    if "json" not in sample:
        return text, {}
    try:
        meta = json.loads(sample["json"])
    except (ValueError, UnicodeDecodeError) as e:
        raise AudioDecodeError(f"sample {sample['__key__']!r}: bad json member ({e})") from e
    if not isinstance(meta, dict):
        return text, {}
    labels = {
        k: float(v)
        for k, v in sorted(meta.items())
        if k not in ("path", "text", "id") and isinstance(v, int | float)
    }
    return text or str(meta.get("text", "")).strip(), labels


def _seekable_reader(data: bytes, name: str):
    """(sample rate, frames, reader) of a FLAC/WAV member without decoding it."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:  # libsndfile raises several kinds for garbage
        raise AudioDecodeError(f"cannot decode {name}: {e}") from e
    if info.frames <= 0:
        raise AudioDecodeError(f"empty audio (0 samples): {name}")
    as_float = info.channels > 1 or info.subtype in ("FLOAT", "DOUBLE")

    def read(start: int, n: int) -> np.ndarray:
        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                if start:
                    f.seek(start)
                x = f.read(n, dtype="float32" if as_float else "int16", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioDecodeError(f"cannot decode {name}: {e}") from e
        if not as_float:
            return x[:, 0]
        mono = x.mean(axis=1)
        if not np.all(np.isfinite(mono)):
            raise AudioDecodeError(f"audio holds NaN or Inf: {name}")
        return records.to_int16(mono)

    return int(info.samplerate), int(info.frames), read


def parse_sample(sample: dict[str, bytes]) -> records.Utterance:
    """A WebDataset sample -> records.Utterance; AudioDecodeError for a bad one."""
    key = sample["__key__"]
    ext = next((k for k in AUDIO_KEYS if k in sample), None)
    if ext is None:
        keys = sorted(k for k in sample if k != "__key__")
        raise AudioDecodeError(
            f"sample {key!r} has no audio member ({', '.join(AUDIO_KEYS)}): {keys}"
        )
    text, labels = _text_labels(sample)
    name = f"{key}.{ext}"
    if ext in _SEEKABLE:
        rate, frames, read = _seekable_reader(sample[ext], name)
        return records.Utterance(key, text, rate, frames, labels, read)
    wav, rate = decode_audio(sample[ext], name)
    return records.from_arrays(wav, sample_rate=rate, uid=key, text=text, labels=labels)


# ---- random access for validation and the latent cache -------------------------------------


class TarIndexSource:
    """Random access to the samples of some shards, from one scan of their headers (only
    headers are read: the data of each member is seeked over). Meant for validation splits
    and tools; training streams instead (see the module docstring)."""

    def __init__(self, paths: list[str]):
        self._paths = list(paths)
        self._refs: list[SampleRef] = []
        for i, path in enumerate(self._paths):
            try:
                with files.open_read(path) as f:
                    self._refs += [ref for ref, _ in iter_samples(f, i, want=lambda _: False)]
            except (TarError, OSError) as e:
                logging.warning("webdataset shard %s: %s (its later samples are left out)", path, e)

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, i: int) -> dict[str, bytes]:
        ref = self._refs[i]
        try:
            with files.open_read(self._paths[ref.shard]) as f:
                return read_sample(f, ref)
        except (TarError, OSError) as e:
            return {"__key__": f"{self._paths[ref.shard]}@{ref.start}", "error": str(e).encode()}


def split_paths(data_cfg, split: str) -> list[str]:
    paths = shard_paths(data_cfg.path, split, data_cfg.train_split)
    if not paths:
        raise DataError(f"data.path={data_cfg.path!r} matches no .tar shards (split {split!r})")
    missing = [p for p in paths[: 1 if files.is_remote(paths[0]) else None] if not files.isfile(p)]
    if missing:
        raise DataError(
            f"webdataset shards of data.path={data_cfg.path!r} are missing: {missing[:3]}"
        )
    return paths


def open_split(data_cfg, split: str, sample_rate: int) -> SplitSource:
    """A split as a random-access source (validation): its shards' headers are scanned once."""
    del sample_rate  # samples carry their rate
    paths = split_paths(data_cfg, split)
    source = TarIndexSource(paths)
    where = f"webdataset {data_cfg.path} (split {split}, {len(paths)} shards)"
    return SplitSource(source, parse_sample, where, None, ())


def ensure(data_cfg, sample_rate: int) -> None:
    """The train split's shards exist (all of them locally; the first one on object storage,
    where a check per shard would cost a request each)."""
    del sample_rate
    split_paths(data_cfg, data_cfg.train_split)
