"""Prepare CLI: audio files (+ transcripts) -> ArrayRecord shards and dataset_info.json.

    python -m f3_jax.data.prepare --input DIR_OR_GLOB --output DIR [--split train]
        [--manifest FILE] [--sample_rate 24000] [--num_shards N] [--format flac|pcm16]
        [--workers N] [--min_seconds 0.1] [--overwrite]
        [--engine local|beam] [--runner DirectRunner|DataflowRunner|...] [Beam options]

Every file is decoded (soundfile, librosa fallback), mixed to mono and resampled with soxr.
A file that cannot be decoded, is empty, holds NaN/Inf or is shorter than --min_seconds is
skipped and listed with its reason in dataset_info.json. Rerunning after an interruption
completes only the missing shards; a split that dataset_info.json lists as complete is replaced
only with --overwrite. Input, manifest and output may be local or gs:// URLs.

--engine local (the default) decodes in a pool of --workers processes on this machine;
--engine beam runs the same per-file code as an Apache Beam pipeline (data/beam_prepare.py)
on --runner, with any further flags passed to Beam as pipeline options.
"""

from __future__ import annotations

import argparse
import math
import sys

from f3_jax import cli
from f3_jax.data import files, records
from f3_jax.data.dataset_info import drop_split, read_info, update_info
from f3_jax.data.errors import DataError
from f3_jax.data.file_jobs import DEFAULT_MIN_SECONDS, find_audio, make_jobs, prepare_one
from f3_jax.data.shards import foreign_files, worker_pool, write_split

FILES_PER_SHARD = 1024  # for --num_shards 0 (auto)
ENGINES = ("local", "beam")


def check_output(output: str, split: str, overwrite: bool) -> None:
    """DataError unless `output` can take `split`: it must be a directory (or not exist yet),
    and a split listed as complete in its dataset_info.json, or a split directory holding
    files the writer did not make, is replaced only with overwrite."""
    if files.isfile(output):
        raise DataError(f"--output {output} is a file, not a directory")
    if overwrite:
        return
    split_dir = files.join(output, split)
    info = read_info(output)
    if info and split in info.get("splits", {}):
        raise DataError(
            f"{split_dir} already holds split {split!r}: pass --overwrite to replace it"
        )
    foreign = foreign_files(output, split)
    if foreign:
        raise DataError(
            f"{split_dir} holds files that are not shards of a split ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}): pass --overwrite to delete them"
        )


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
    min_seconds: float = DEFAULT_MIN_SECONDS,
    overwrite: bool = False,
    engine: str = "local",
    pipeline_args: tuple[str, ...] = (),
) -> dict:
    """Library entry point of the CLI; returns the updated dataset_info."""
    return prepare_split(**locals())[0]


def prepare_split(
    input_pattern: str,
    output: str,
    *,
    split: str,
    manifest: str | None,
    sample_rate: int,
    num_shards: int,
    encoding: str,
    workers: int,
    min_seconds: float,
    overwrite: bool,
    engine: str,
    pipeline_args: tuple[str, ...],
) -> tuple[dict, dict[str, int]]:
    """`prepare`, and the Beam engine's counters ({} for the local engine)."""
    if sample_rate <= 0:
        raise DataError(f"sample_rate={sample_rate} must be a positive rate in Hz")
    if not min_seconds >= 0:  # also catches nan
        raise DataError(f"min_seconds={min_seconds} must be >= 0")
    if engine not in ENGINES:
        raise DataError(f"engine={engine!r}: use one of {', '.join(ENGINES)}")
    check_output(output, split, overwrite)
    paths, root = find_audio(input_pattern)
    jobs = make_jobs(paths, root, manifest, sample_rate, encoding, min_seconds)
    settings = {
        "sample_rate": sample_rate,
        "encoding": encoding,
        "manifest": manifest or "",
        "min_seconds": min_seconds,
    }
    try:
        files.makedirs(output)
    except OSError as e:  # a file on the way (out.txt/dir), no permission, ...
        raise DataError(f"cannot create --output {output}: {e}") from e
    if engine == "beam":
        return _run_beam(jobs, output, split, num_shards, settings, pipeline_args)
    return _run_local(jobs, output, split, num_shards, settings, workers), {}


def _run_beam(jobs, output, split, num_shards, settings, pipeline_args) -> tuple[dict, dict]:
    from f3_jax.data import beam_prepare  # lazy: apache-beam is an optional extra

    counts = beam_prepare.run(
        jobs,
        output,
        split=split,
        num_shards=num_shards,
        settings=settings,
        files_per_shard=FILES_PER_SHARD,
        pipeline_args=list(pipeline_args),
    )
    info = read_info(output)
    if info is None or split not in info.get("splits", {}):
        raise RuntimeError(f"the Beam pipeline ended without listing {split} in {output}")
    return info, counts


def _run_local(jobs, output, split, num_shards, settings, workers) -> dict:
    num_shards = num_shards or math.ceil(len(jobs) / FILES_PER_SHARD)
    drop_split(output, split)  # listed again once every shard is complete
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
    rate, encoding = settings["sample_rate"], settings["encoding"]
    return update_info(output, {split: summary}, sample_rate=rate, encoding=encoding)


def _bad_flag(a: argparse.Namespace) -> str:
    """The first flag value that cannot work, as a one-line message ('' if none)."""
    if a.sample_rate <= 0:
        return f"--sample_rate={a.sample_rate} must be a positive rate in Hz"
    if not a.min_seconds >= 0:  # also catches nan
        return f"--min_seconds={a.min_seconds} must be >= 0"
    if a.num_shards < 0:
        return f"--num_shards={a.num_shards} must be >= 0 (0: one shard per 1024 files)"
    return ""


def _bad_extra(a: argparse.Namespace, extra: list[str]) -> str:
    """Flags argparse did not know: Beam's pipeline options, or a mistake."""
    if not extra or a.engine == "beam":
        return ""
    return f"unrecognized arguments: {' '.join(extra)} (Beam pipeline options need --engine beam)"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--input", required=True, help="directory (searched recursively) or glob")
    ap.add_argument("--output", required=True, help="output directory")
    ap.add_argument("--split", default="train", help="split name (train, valid, test, ...)")
    ap.add_argument("--manifest", default=None, help="JSONL (path, text) or TSV path<TAB>text")
    ap.add_argument("--sample_rate", type=int, default=24000)
    ap.add_argument("--num_shards", type=int, default=0, help="0: one per 1024 files")
    ap.add_argument("--format", choices=records.ENCODINGS, default="flac")
    ap.add_argument("--workers", type=int, default=2, help="decode processes (0: in-process)")
    ap.add_argument(
        "--min_seconds",
        type=float,
        default=DEFAULT_MIN_SECONDS,
        help=f"skip clips shorter than this (default {DEFAULT_MIN_SECONDS} s: 5 latent frames "
        "of the 24 kHz configs, whose hop is 480 samples = 0.02 s)",
    )
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a split the output already holds (without it: an error, exit 2)",
    )
    ap.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: a process pool here; beam: an Apache Beam pipeline (pip install .[beam])",
    )
    ap.add_argument(
        "--runner",
        default="DirectRunner",
        help="--engine beam: DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ... "
        "(other unknown flags are Beam pipeline options: --project, --region, ...)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    a, beam_args = ap.parse_known_args(argv)
    bad = _bad_flag(a) or _bad_extra(a, beam_args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    try:
        info, counts = prepare_split(
            a.input,
            a.output,
            split=a.split,
            manifest=a.manifest,
            sample_rate=a.sample_rate,
            num_shards=a.num_shards,
            encoding=a.format,
            workers=a.workers,
            min_seconds=a.min_seconds,
            overwrite=a.overwrite,
            engine=a.engine,
            pipeline_args=(f"--runner={a.runner}", *beam_args),
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if counts:
        print("beam: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    s = info["splits"][a.split]
    print(
        f"{a.output}: split {a.split}: {s['num_examples']} utterances, {s['hours']:.3f} h, "
        f"{s['num_skipped']} skipped (reasons in dataset_info.json)"
    )
    for item in s["skipped"][:10]:
        print(f"  skipped {item['path']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
