"""Data throughput: training batches per second from each source, and preparation files/s.

    PYTHONPATH=. python benchmarks/data_pipeline.py [--clips 600] [--repeats 3]
        [--settings ae_24k repr_24k] [--sources pcm16 flac webdataset] [--beam_files 120]
        [--json OUT]

Builds a synthetic corpus (chirps of 2-20.5 s at 16 kHz, resampled to 24 kHz by prepare) in a
temporary folder: ArrayRecord shards in both record formats (the local prepare engine, 2
processes) and WebDataset tar shards of 24 kHz FLAC with transcripts. Then, for each source
and each batch setting of the 24 kHz configs (ae_24k: 64 random 1 s crops; repr_24k and
flow_24k: 256 clips from their start, padded to 20 s), times `train_dataset` batches after a
warm-up (iterator start-up, worker start and shuffle-buffer filling not counted), `--repeats`
times. Audio-seconds are real samples (the mask's sum), so padding does not count. Prints
audio-s/s per host and per core (divided by the CPU count) as min / median / max, and the
preparation rate of both prepare engines (local pool; Beam on the DirectRunner) in files/s,
start-up included. Targets on 2 CPU cores: >= 1000x real time for pcm16, >= 200x for FLAC.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tarfile
import tempfile
import time

from f3_jax.config import data_defaults
from f3_jax.data import records, train_dataset
from f3_jax.data.prepare import prepare, prepare_split
from f3_jax.data.synthetic import write_wav_dir
from f3_jax.data.webdataset_samples import TarIndexSource  # noqa: F401  (import cost up front)

SAMPLE_RATE = 24000
# Batch and crop of the 24 kHz configs (configs/ae_24k.py, repr_24k.py, flow_24k.py).
SETTINGS = {
    "ae_24k": {"batch_size": 64, "crop_seconds": 1.0, "crop_mode": "random", "batches": 40},
    "repr_24k": {"batch_size": 256, "crop_seconds": 20.0, "crop_mode": "utterance", "batches": 4},
}
CLIPS_PER_TAR = 25


def write_tars(flac_dir: str, out_dir: str) -> str:
    """WebDataset shards (key.flac + key.txt) holding the FLAC records' audio; the pattern."""
    info = json.load(open(os.path.join(flac_dir, "dataset_info.json")))
    from array_record.python import array_record_data_source

    src = array_record_data_source.ArrayRecordDataSource(
        [os.path.join(flac_dir, s) for s in info["splits"]["train"]["shards"]]
    )
    os.makedirs(out_dir, exist_ok=True)
    n_tars = -(-len(src) // CLIPS_PER_TAR)
    for t in range(n_tars):
        with tarfile.open(os.path.join(out_dir, f"train-{t:04d}.tar"), "w") as tar:
            for i in range(t * CLIPS_PER_TAR, min((t + 1) * CLIPS_PER_TAR, len(src))):
                raw = src[i]
                u = records.decode(raw)
                flac = bytes(raw[8 + int.from_bytes(raw[4:8], "little") :])  # the FLAC payload
                for ext, data in (("flac", flac), ("txt", u.text.encode())):
                    member = tarfile.TarInfo(f"{u.uid}.{ext}")
                    member.size = len(data)
                    tar.addfile(member, _Reader(data))
    return os.path.join(out_dir, f"train-{{0000..{n_tars - 1:04d}}}.tar")


class _Reader:
    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        out = self._data[self._pos :] if n < 0 else self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


def measure(source: str, path: str, setting: dict, warmup: int) -> float:
    """Real audio-seconds per second of one run of train_dataset batches."""
    cfg = data_defaults()
    cfg.source = "webdataset" if source == "webdataset" else "array_record"
    cfg.path = path
    cfg.crop_seconds = setting["crop_seconds"]
    cfg.crop_mode = setting["crop_mode"]
    it = iter(
        train_dataset(
            cfg,
            sample_rate=SAMPLE_RATE,
            batch_size=setting["batch_size"],
            seed=0,
            process_index=0,
            process_count=1,
        )
    )
    try:
        for _ in range(warmup):
            next(it)
        t0, audio_s = time.perf_counter(), 0.0
        for _ in range(setting["batches"]):
            audio_s += float(next(it)["mask"].sum()) / SAMPLE_RATE
        return audio_s / (time.perf_counter() - t0)
    finally:
        if hasattr(it, "close"):
            it.close()


def spread(values: list[float]) -> str:
    return f"{min(values):7.0f} / {statistics.median(values):7.0f} / {max(values):7.0f}"


def prepare_rates(wavs: str, tmp: str, beam_files: int) -> dict[str, float]:
    """files/s of the local engine (2 processes) and of Beam's DirectRunner, start-up included."""
    n = len(os.listdir(wavs))
    out = {}
    t0 = time.perf_counter()
    prepare(wavs, os.path.join(tmp, "local_rate"), encoding="flac", workers=2)
    out["local engine, 2 processes"] = n / (time.perf_counter() - t0)
    subset = os.path.join(tmp, "beam_in")
    os.makedirs(subset)
    for name in sorted(os.listdir(wavs))[:beam_files]:
        os.symlink(os.path.join(wavs, name), os.path.join(subset, name))
    for label, extra in (
        ("beam DirectRunner, in-memory", ()),
        (
            "beam DirectRunner, 2 processes",
            ("--direct_num_workers=2", "--direct_running_mode=multi_processing"),
        ),
    ):
        t0 = time.perf_counter()
        prepare_split(
            subset, os.path.join(tmp, label.replace(" ", "_").replace(",", "")),
            split="train", manifest=None, sample_rate=SAMPLE_RATE, num_shards=4,
            encoding="flac", workers=0, min_seconds=0.1, overwrite=False, engine="beam",
            pipeline_args=("--runner=DirectRunner", *extra),
        )  # fmt: skip
        out[label] = min(beam_files, n) / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument(
        "--sources", nargs="+", default=["pcm16", "flac", "webdataset"],
        choices=["pcm16", "flac", "webdataset"],
    )  # fmt: skip
    ap.add_argument("--batches", type=int, default=0, help="per run (0: the setting's default)")
    ap.add_argument("--beam_files", type=int, default=120, help="0: no preparation rates")
    ap.add_argument("--json", default="", help="also write the figures here")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    results: dict = {"cores": cores, "clips": a.clips, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        wavs = os.path.join(tmp, "wav")
        write_wav_dir(wavs, a.clips, seconds=(2.0, 20.5), sample_rate=16000)
        paths = {}
        for fmt in ("pcm16", "flac"):
            info = prepare(wavs, os.path.join(tmp, fmt), encoding=fmt, workers=2)
            paths[fmt] = os.path.join(tmp, fmt)
        paths["webdataset"] = write_tars(paths["flac"], os.path.join(tmp, "tars"))
        print(f"{cores} cores; {a.clips} clips, {info['hours'] * 60:.1f} min at 24 kHz")
        print("audio-s/s (x real time), min / median / max over repeats")
        for name in a.settings:
            setting = dict(SETTINGS[name])
            setting["batches"] = a.batches or setting["batches"]
            for source in a.sources:
                runs = [measure(source, paths[source], setting, warmup=2) for _ in range(a.repeats)]
                results[f"{name}/{source}"] = runs
                shape = f"batch {setting['batch_size']:3d} x {setting['crop_seconds']:4.1f} s"
                print(
                    f"{name:8s} {shape} {source:10s} per host {spread(runs)}   per core "
                    f"{spread([r / cores for r in runs])}",
                    flush=True,
                )
        if a.beam_files:
            for label, rate in prepare_rates(wavs, tmp, a.beam_files).items():
                results[f"prepare/{label}"] = rate
                print(f"prepare, {label}: {rate:.1f} files/s", flush=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
