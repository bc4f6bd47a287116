"""Training-pipeline throughput: one-second crops per second, pcm16 vs FLAC, 0 vs 2 workers.

    PYTHONPATH=. python benchmarks/data_pipeline.py [--clips 120] [--batches 60] [--batch_size 32]

Builds a synthetic dataset (chirps of 2-10 s at 16 kHz) with the prepare CLI in a temp dir,
in both record formats, then times train_dataset batches after a warm-up (worker start-up is
not counted). Prints crops/s and real audio-seconds/s (mask sum) per host, and the factor
over real time. Targets on 2 CPU cores: >= 1000x real time pcm16, >= 200x FLAC.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from f3_jax.config import data_defaults
from f3_jax.data import train_dataset
from f3_jax.data.prepare import prepare
from f3_jax.data.synthetic import write_wav_dir

SAMPLE_RATE = 24000


def measure(path: str, workers: int, batches: int, batch_size: int, warmup: int) -> tuple:
    cfg = data_defaults()
    cfg.path = path
    cfg.crop_seconds = 1.0
    cfg.num_workers = workers
    ds = train_dataset(
        cfg,
        sample_rate=SAMPLE_RATE,
        batch_size=batch_size,
        seed=0,
        process_index=0,
        process_count=1,
    )
    it = iter(ds)
    try:
        for _ in range(warmup):
            next(it)
        t0, crops, audio_s = time.perf_counter(), 0, 0.0
        for _ in range(batches):
            b = next(it)
            crops += b["audio"].shape[0]
            audio_s += float(b["mask"].sum()) / SAMPLE_RATE
        dt = time.perf_counter() - t0
    finally:
        if hasattr(it, "close"):
            it.close()
    return crops / dt, audio_s / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wavs = os.path.join(tmp, "wav")
        write_wav_dir(wavs, a.clips, seconds=(2.0, 10.0), sample_rate=16000)
        print(f"cpu cores: {os.cpu_count()}; {a.clips} clips; batch {a.batch_size} x 1 s crops")
        for fmt in ("pcm16", "flac"):
            out = os.path.join(tmp, fmt)
            t0 = time.perf_counter()
            info = prepare(wavs, out, encoding=fmt, workers=2)
            print(
                f"prepare {fmt}: {info['hours'] * 60:.1f} min of audio in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            for w in a.workers:
                warmup = 5 if w == 0 else 20
                crops, audio = measure(out, w, a.batches, a.batch_size, warmup)
                print(
                    f"{fmt:6s} workers={w}: {crops:8.0f} crops/s  {audio:8.0f} audio-s/s  "
                    f"({audio:.0f}x real time)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
