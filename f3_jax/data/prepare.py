"""Prepare CLI: audio files (+ transcripts) -> ArrayRecord shards and dataset_info.json.

    python -m f3_jax.data.prepare --input DIR_OR_GLOB --output DIR [--split train]
        [--manifest FILE] [--sample_rate 24000] [--num_shards N] [--format flac|pcm16]
        [--workers N]

Every file is decoded (soundfile, librosa fallback), mixed to mono and resampled with soxr.
A file that cannot be decoded, is empty or holds NaN/Inf is skipped and listed with its reason
in dataset_info.json. Rerunning after an interruption completes only the missing shards.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys

from f3_jax.data import records
from f3_jax.data.audio_io import AUDIO_EXTENSIONS, load_audio
from f3_jax.data.dataset_info import update_info
from f3_jax.data.errors import DataError
from f3_jax.data.shards import Job, Result, worker_pool, write_split
from f3_jax.data.transcripts import Entry, LayoutTranscripts, read_manifest

FILES_PER_SHARD = 1024  # for --num_shards 0 (auto)


def find_audio(pattern: str) -> tuple[list[str], str]:
    """Sorted absolute audio paths under a directory or matching a glob, and their common root."""
    if os.path.isdir(pattern):
        root = os.path.abspath(pattern)
        paths = [
            os.path.join(d, f)
            for d, _, files in os.walk(root)
            for f in files
            if f.lower().endswith(AUDIO_EXTENSIONS)
        ]
    else:
        paths = [
            os.path.abspath(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)
        ]
        root = os.path.commonpath(paths) if paths else ""
        root = os.path.dirname(root) if os.path.isfile(root) else root
    if not paths:
        raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found at {pattern!r}")
    return sorted(paths), root


def _uid(path: str, root: str) -> str:
    return os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")


def make_jobs(
    paths: list[str], root: str, manifest: str | None, sample_rate: int, encoding: str
) -> list[Job]:
    entries = read_manifest(manifest) if manifest else {}
    layout = LayoutTranscripts()
    jobs = []
    for p in paths:
        entry = entries.get(os.path.realpath(p)) or Entry(text=layout(p))
        uid = entry.uid or _uid(p, root)
        jobs.append(Job(p, (p, uid, entry.text, dict(entry.labels), sample_rate, encoding)))
    return jobs


def prepare_one(job: Job) -> Result:
    """Worker: one file -> record bytes, or the reason it is skipped. Never raises."""
    path, uid, text, labels, sample_rate, encoding = job.args
    try:
        wav = load_audio(path, sample_rate)
        rec = records.encode(
            wav, sample_rate=sample_rate, uid=uid, text=text, labels=labels, encoding=encoding
        )
    except Exception as e:  # any failure of one file must not stop the others
        return Result(None, reason=f"{type(e).__name__}: {e}")
    return Result(rec, seconds=wav.shape[0] / sample_rate, label_names=tuple(labels))


def prepare(
    input_pattern: str,
    output: str,
    *,
    split: str = "train",
    manifest: str | None = None,
    sample_rate: int = 24000,
    num_shards: int = 0,
    encoding: str = "flac",
    workers: int = 2,
) -> dict:
    """Library entry point of the CLI; returns the updated dataset_info."""
    paths, root = find_audio(input_pattern)
    jobs = make_jobs(paths, root, manifest, sample_rate, encoding)
    num_shards = num_shards or math.ceil(len(jobs) / FILES_PER_SHARD)
    settings = {"sample_rate": sample_rate, "encoding": encoding, "manifest": manifest or ""}
    os.makedirs(output, exist_ok=True)
    with worker_pool(min(workers, len(jobs))) as map_fn:
        summary = write_split(
            output,
            split,
            jobs,
            prepare_one,
            num_shards=num_shards,
            map_fn=map_fn,
            settings=settings,
            desc=f"prepare {split}",
        )
    return update_info(output, {split: summary}, sample_rate=sample_rate, encoding=encoding)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="directory (searched recursively) or glob")
    ap.add_argument("--output", required=True, help="output directory")
    ap.add_argument("--split", default="train", help="split name (train, valid, test, ...)")
    ap.add_argument("--manifest", default=None, help="JSONL (path, text) or TSV path<TAB>text")
    ap.add_argument("--sample_rate", type=int, default=24000)
    ap.add_argument("--num_shards", type=int, default=0, help="0: one per 1024 files")
    ap.add_argument("--format", choices=records.ENCODINGS, default="flac")
    ap.add_argument("--workers", type=int, default=2, help="decode processes (0: in-process)")
    a = ap.parse_args(argv)
    try:
        info = prepare(
            a.input,
            a.output,
            split=a.split,
            manifest=a.manifest,
            sample_rate=a.sample_rate,
            num_shards=a.num_shards,
            encoding=a.format,
            workers=a.workers,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = info["splits"][a.split]
    print(
        f"{a.output}: split {a.split}: {s['num_examples']} utterances, {s['hours']:.3f} h, "
        f"{s['num_skipped']} skipped (reasons in dataset_info.json)"
    )
    for item in s["skipped"][:10]:
        print(f"  skipped {item['path']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
