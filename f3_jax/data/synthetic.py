"""Synthetic audio files and record directories for tests and benchmarks (no TTS needed)."""

from __future__ import annotations

import os

import numpy as np

from f3_jax.data import records
from f3_jax.data.audio_io import write_audio
from f3_jax.data.dataset_info import update_info
from f3_jax.data.shards import Job, Result, worker_pool, write_split


def tone(seconds: float, sample_rate: int, rng: np.random.Generator, channels: int = 1):
    """A random chirp plus a little noise: distinct per clip, in [-0.5, 0.5]."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    f0, f1 = rng.uniform(100, 2000, size=2)
    wav = 0.4 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / max(seconds, 1e-3) / 2) * t)
    wav = wav[:, None] + 0.05 * rng.standard_normal((t.shape[0], channels))
    return (wav[:, 0] if channels == 1 else wav).astype(np.float32)


def write_wav_dir(
    directory: str,
    n: int,
    *,
    seconds: tuple[float, float] = (1.0, 3.0),
    sample_rate: int = 16000,
    seed: int = 0,
    channels: int = 1,
) -> list[str]:
    """n wav files of random lengths under directory; returns their paths."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(directory, f"clip{i:04d}.wav")
        write_audio(path, tone(rng.uniform(*seconds), sample_rate, rng, channels), sample_rate)
        paths.append(path)
    return paths


def _as_result(job: Job) -> Result:
    rec, seconds, labels = job.args
    return Result(rec, seconds=seconds, label_names=tuple(labels))


def write_record_dir(
    root: str,
    splits: dict[str, list[dict]],
    *,
    sample_rate: int,
    encoding: str = "pcm16",
    extra: dict | None = None,
) -> dict:
    """Writes utterances {"wav", "id", "text", "labels"} (or {"raw": bytes}, a broken record)
    straight to a record directory, as prepare would; returns dataset_info."""
    summaries = {}
    with worker_pool(0) as map_fn:
        for split, utts in splits.items():
            jobs = []
            for i, u in enumerate(utts):
                if "raw" in u:
                    rec, seconds, labels = u["raw"], 0.0, {}
                else:
                    labels = u.get("labels", {})
                    rec = records.encode(
                        u["wav"],
                        sample_rate=sample_rate,
                        uid=u["id"],
                        text=u.get("text", ""),
                        labels=labels,
                        encoding=encoding,
                    )
                    seconds = len(u["wav"]) / sample_rate
                jobs.append(Job(f"{split}-{i}", (rec, seconds, labels)))
            summaries[split] = write_split(
                root,
                split,
                jobs,
                _as_result,
                num_shards=2,
                map_fn=map_fn,
                settings={"encoding": encoding},
                desc=f"write {split}",
            )
    return update_info(root, summaries, sample_rate=sample_rate, encoding=encoding, extra=extra)
