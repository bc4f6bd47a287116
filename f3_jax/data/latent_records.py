"""The latent cache on the data side: its layout, its record format and its training crop.

`python -m f3_jax.latent_cache` writes the frozen autoencoder's latents of whole utterances:

    <data.latent_cache>/<digest[:16]>/latent_info.json
    <data.latent_cache>/<digest[:16]>/<split>/<split>-00000-of-0000N.array_record (+ .json)

digest: the sha256 of the autoencoder export's weights.safetensors, so that latents of another
autoencoder are never read by mistake (the info file holds the whole digest). A record:

    bytes 0-3   magic b"F3LT"
    bytes 4-7   header length H, uint32 little endian
    bytes 8-8+H UTF-8 JSON: {"id", "text", "labels": {name: float}, "num_samples",
                             "sample_rate", "num_frames", "latent_dim", "dtype"}
    rest        latents (num_frames, latent_dim), float16 or float32 little endian, row-major

num_samples counts the utterance at the autoencoder's sample_rate; num_frames =
ceil(num_samples / hop), as Tokenizer.encode gives. `LatentCrop` crops them as crops.RandomCrop
crops audio, in frames: the frame mask marks the frames whose centre sample is real audio (the
rule of f3_jax.dsp.frame_mask, counted here without jax). Unlike encoding a crop, the cached latents
near a crop's cut or the utterance's end see the real neighbouring audio, not zero padding;
frames past the utterance's last latent are zeros.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Any

import numpy as np

from f3_jax.data.crops import SKIPPED
from f3_jax.data.errors import DataError

MAGIC = b"F3LT"
DTYPES = ("float16", "float32")
INFO_NAME = "latent_info.json"
FORMAT = "f3_jax.latent_records"
DIGEST_CHARS = 16  # of the sha256 hex digest, naming the cache directory of one autoencoder


def encode(
    latents: np.ndarray,
    *,
    uid: str,
    text: str,
    labels: dict[str, float],
    num_samples: int,
    sample_rate: int,
    dtype: str = "float32",
) -> bytes:
    """Serializes the (T, D) latents of one utterance and its metadata to record bytes."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of {DTYPES}")
    z = np.ascontiguousarray(latents, dtype=np.dtype(dtype).newbyteorder("<"))
    header = {
        "id": uid,
        "text": text,
        "labels": {k: float(v) for k, v in labels.items()},
        "num_samples": int(num_samples),
        "sample_rate": int(sample_rate),
        "num_frames": int(z.shape[0]),
        "latent_dim": int(z.shape[1]),
        "dtype": dtype,
    }
    head = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return MAGIC + struct.pack("<I", len(head)) + head + z.tobytes()


@dataclasses.dataclass(frozen=True)
class LatentRecord:
    uid: str
    text: str
    labels: dict[str, float]
    num_samples: int
    sample_rate: int
    latents: np.ndarray  # (num_frames, latent_dim), float16 or float32, read-only view


def decode(data: bytes) -> LatentRecord:
    """Parses record bytes; raises DataError for anything malformed."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise DataError("not an f3_jax latent record (bad magic)")
    (head_len,) = struct.unpack("<I", data[4:8])
    try:
        h = json.loads(bytes(data[8 : 8 + head_len]).decode("utf-8"))
        shape = (int(h["num_frames"]), int(h["latent_dim"]))
        dtype = np.dtype(h["dtype"]).newbyteorder("<")
        z = np.frombuffer(data, dtype, count=shape[0] * shape[1], offset=8 + head_len)
        return LatentRecord(
            uid=str(h["id"]),
            text=str(h.get("text", "")),
            labels={k: float(v) for k, v in h.get("labels", {}).items()},
            num_samples=int(h["num_samples"]),
            sample_rate=int(h["sample_rate"]),
            latents=z.reshape(shape),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"bad latent record: {e}") from e


def valid_frames(num_samples: int, hop: int) -> int:
    """Frames whose centre sample is real (f3_jax.dsp.frame_mask's rule) for a clip of
    num_samples followed by padding: the whole frames, and the last partial one when its
    centre is inside the clip (more than half of it is real)."""
    return num_samples // hop + int(2 * (num_samples % hop) > hop)


def cache_dir(root: str, digest: str) -> str:
    """The directory of one autoencoder's latents under data.latent_cache."""
    return os.path.join(root, digest[:DIGEST_CHARS])


def build_command(root: str) -> str:
    return f"python -m f3_jax.latent_cache --config CONFIG --config.data.latent_cache={root}"


def read_info(directory: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, INFO_NAME), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT else None


@dataclasses.dataclass(frozen=True)
class LatentCache:
    """A checked cache directory of one autoencoder: what train_dataset reads batches from."""

    directory: str
    hop: int
    info: dict


def open_cache(root: str, digest: str, hop: int) -> LatentCache:
    """The cache of the autoencoder with weights `digest`; DataError naming the path if unusable."""
    directory = cache_dir(root, digest)
    info = read_info(directory)
    if info is None:
        raise DataError(
            f"data.latent_cache={root!r} has no latents of this autoencoder: no "
            f"{os.path.join(directory, INFO_NAME)}; build them with `{build_command(root)}`"
        )
    if info.get("autoencoder_digest") != digest:
        raise DataError(
            f"{directory} holds the latents of autoencoder {info.get('autoencoder_digest')}, "
            f"not of this one ({digest}): rebuild them with `{build_command(root)}`"
        )
    if int(info["hop"]) != hop:
        raise DataError(f"{directory}: hop {info['hop']} differs from the autoencoder's {hop}")
    return LatentCache(directory, hop, info)


def split_shards(cache: LatentCache, split: str) -> tuple[list[str], dict]:
    """Absolute shard paths of `split` and its summary; DataError when absent or empty."""
    splits = cache.info.get("splits", {})
    if split not in splits:
        raise DataError(
            f"latent cache {cache.directory} has no split {split!r} (it has {sorted(splits)}): "
            f"add it with `python -m f3_jax.latent_cache --splits {split} ...`"
        )
    s = splits[split]
    if s["num_examples"] == 0:
        raise DataError(f"split {split!r} of latent cache {cache.directory} holds no records")
    shards = [os.path.join(cache.directory, name) for name in s["shards"]]
    missing = [p for p in shards if not os.path.exists(p)]
    if missing:
        raise DataError(f"shards in {cache.directory}/{INFO_NAME} are missing: {missing[:3]}")
    return shards, s


@dataclasses.dataclass(frozen=True)
class LatentCrop:
    """grain random_map transform: latent record -> {"audio": latents, "mask": frame mask, ...}.

    The keys are those of audio crops so that batching.SkipCountingBatch stacks them; the
    pipeline renames them to "latents" and "frame_mask" after batching.
    """

    hop: int
    crop_frames: int
    crop_samples: int  # data.crop_seconds at the sample rate: longer clips are cut
    min_len: int  # clips of fewer samples are dropped
    from_start: bool = False  # data.crop_mode == "utterance": no random offset

    def __call__(self, raw: Any, rng: np.random.Generator) -> dict:
        try:
            rec = decode(raw)
        except DataError:
            return {SKIPPED: True}
        n = rec.num_samples
        if n == 0 or n < self.min_len:
            return {SKIPPED: True}
        valid = min(valid_frames(n, self.hop), rec.latents.shape[0])
        cut = n > self.crop_samples
        start = 0
        if cut and not self.from_start:
            start = int(rng.integers(0, max(0, valid - self.crop_frames) + 1))
        part = rec.latents[start : start + self.crop_frames]
        latents = np.zeros((self.crop_frames, rec.latents.shape[1]), np.float32)
        latents[: part.shape[0]] = part
        mask = np.zeros(self.crop_frames, np.float32)
        mask[: max(0, min(valid - start, self.crop_frames))] = 1.0
        # A crop of part of a clip no longer matches its transcript: drop the text then.
        return {"audio": latents, "mask": mask, "text": "" if cut else rec.text, "id": rec.uid}
