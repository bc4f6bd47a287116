"""The record format of the ArrayRecord shards: a JSON header and the audio, no pickle.

    bytes 0-3   magic b"F3AU"
    bytes 4-7   header length H, uint32 little endian
    bytes 8-8+H UTF-8 JSON: {"id", "text", "sample_rate", "num_samples",
                             "encoding": "pcm16" | "flac", "labels": {name: float}}
    rest        audio: int16 little-endian PCM, or a FLAC stream (16 bit, mono)

Audio is stored as int16 (x * 32767, rounded, clipped to [-1, 1] first) and read back as
int16 / 32767, so a round trip is exact up to int16 quantization. A reader can crop without
decoding the whole clip: PCM is sliced in place and FLAC is seeked (libsndfile decodes only the
FLAC frames it needs), which is what makes random 1 s crops of long clips cheap.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct

import numpy as np
import soundfile as sf

from f3_jax.data.errors import AudioDecodeError

MAGIC = b"F3AU"
ENCODINGS = ("pcm16", "flac")
_INT16_SCALE = 32767.0


def to_int16(wav: np.ndarray) -> np.ndarray:
    return np.round(np.clip(wav, -1.0, 1.0) * _INT16_SCALE).astype("<i2")


def encode(
    wav: np.ndarray,
    *,
    sample_rate: int,
    uid: str,
    text: str = "",
    labels: dict[str, float] | None = None,
    encoding: str = "pcm16",
) -> bytes:
    """Serializes one utterance (float32 mono in [-1, 1]) to record bytes."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}: use one of {ENCODINGS}")
    pcm = to_int16(wav)
    if encoding == "pcm16":
        payload = pcm.tobytes()
    else:
        buf = io.BytesIO()
        sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
        payload = buf.getvalue()
    header = {
        "id": uid,
        "text": text,
        "sample_rate": int(sample_rate),
        "num_samples": int(pcm.shape[0]),
        "encoding": encoding,
        "labels": {k: float(v) for k, v in (labels or {}).items()},
    }
    head = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return MAGIC + struct.pack("<I", len(head)) + head + payload


@dataclasses.dataclass(frozen=True)
class Utterance:
    """A parsed record: metadata now, audio decoded on demand (whole or a range)."""

    uid: str
    text: str
    sample_rate: int
    num_samples: int
    labels: dict[str, float]
    _read: object  # callable (start, length) -> int16 array; hidden behind read()

    def read(self, start: int = 0, length: int | None = None) -> np.ndarray:
        """float32 samples [start, start + length) in [-1, 1]."""
        length = self.num_samples - start if length is None else length
        pcm = self._read(start, length)
        if pcm.shape[0] != length:
            raise AudioDecodeError(
                f"record {self.uid!r}: wanted {length} samples at {start}, got {pcm.shape[0]}"
            )
        return pcm.astype(np.float32) / _INT16_SCALE


def _pcm_reader(payload: memoryview, num_samples: int):
    if len(payload) != 2 * num_samples:
        raise AudioDecodeError(f"pcm16 payload of {len(payload)} bytes for {num_samples} samples")
    return lambda start, n: np.frombuffer(payload, "<i2", count=n, offset=2 * start)


def _flac_reader(payload: bytes):
    def read(start: int, n: int) -> np.ndarray:
        try:
            with sf.SoundFile(io.BytesIO(payload)) as f:
                if start:
                    f.seek(start)
                return f.read(n, dtype="int16", always_2d=True)[:, 0]
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioDecodeError(f"undecodable FLAC payload: {e}") from e

    return read


def decode(data: bytes) -> Utterance:
    """Parses record bytes; raises AudioDecodeError for anything malformed."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise AudioDecodeError("not an f3_jax audio record (bad magic)")
    (head_len,) = struct.unpack("<I", data[4:8])
    try:
        header = json.loads(bytes(data[8 : 8 + head_len]).decode("utf-8"))
        num_samples = int(header["num_samples"])
        encoding = header["encoding"]
        payload = memoryview(data)[8 + head_len :]
        if encoding == "pcm16":
            reader = _pcm_reader(payload, num_samples)
        elif encoding == "flac":
            reader = _flac_reader(bytes(payload))
        else:
            raise AudioDecodeError(f"unknown encoding {encoding!r}")
        return Utterance(
            uid=str(header["id"]),
            text=str(header.get("text", "")),
            sample_rate=int(header["sample_rate"]),
            num_samples=num_samples,
            labels={k: float(v) for k, v in header.get("labels", {}).items()},
            _read=reader,
        )
    except AudioDecodeError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise AudioDecodeError(f"bad record header: {e}") from e


def from_arrays(
    audio: np.ndarray, *, sample_rate: int, uid: str, text: str, labels: dict[str, float]
) -> Utterance:
    """An Utterance over an in-memory int16 or float array (the TFDS path)."""
    audio = np.asarray(audio)
    if audio.ndim == 2:  # (L, C): mix to mono
        audio = audio.astype(np.float32).mean(axis=1)
    if np.issubdtype(audio.dtype, np.integer) and audio.dtype != np.int16:
        audio = np.clip(audio, -32768, 32767).astype(np.int16)  # e.g. TFDS Audio int64
    if audio.dtype != np.int16:
        if not np.all(np.isfinite(audio)):
            raise AudioDecodeError(f"record {uid!r} holds NaN or Inf")
        audio = to_int16(audio.astype(np.float32))
    return Utterance(
        uid=uid,
        text=text,
        sample_rate=int(sample_rate),
        num_samples=int(audio.shape[0]),
        labels=labels,
        _read=lambda start, n: audio[start : start + n],
    )
