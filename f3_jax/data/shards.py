"""The one ArrayRecord writer behind `prepare` (both engines) and `demo_corpus`: resumable.

A split's items are cut into contiguous shards. Workers (a process pool, or Beam workers one
shard each: data/beam_prepare.py) turn items into record bytes; each shard is written to a
local temporary file and published when complete (a rename on a local disk, one upload on
object storage: data/files.py), then a small sidecar `<shard>.json` (counts, durations,
skipped items, and a digest of the shard's inputs and settings) is written. A rerun skips every
shard whose sidecar matches and redoes the rest, so an interrupted run finishes without redoing
complete shards. The root may be local or a gs:// URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from array_record.python import array_record_module
from tqdm import tqdm

from f3_jax.data import files
from f3_jax.data.dataset_info import write_json_atomic

# One record per chunk: random access reads one record without decompressing its neighbours.
# Uncompressed: FLAC is already compressed and zstd gains little on PCM but costs CPU per read.
WRITER_OPTIONS = "group_size:1,uncompressed"


@dataclasses.dataclass(frozen=True)
class Job:
    """One item to turn into a record. `key` identifies the input (enters the shard digest)."""

    key: str
    args: tuple


@dataclasses.dataclass(frozen=True)
class Result:
    """A worker's answer: record bytes and their stats, or None and the reason it was skipped."""

    record: bytes | None
    seconds: float = 0.0
    label_names: tuple[str, ...] = ()
    reason: str = ""


def shard_names(split: str, num_shards: int) -> list[str]:
    return [f"{split}/{split}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def foreign_files(root: str, split: str) -> list[str]:
    """Files in root/<split>/ that this writer did not make (shards of any count, their
    sidecars and temporary files), sorted. write_split deletes whatever it does not keep, so
    a caller must not let it loose on a directory holding anything else."""
    ours = re.compile(
        rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}\.array_record(\.json)?(\.tmp([.-]\w+)?)?"
    )
    return [f for f in files.listdir(files.join(root, split)) if not ours.fullmatch(f)]


def _split_jobs(jobs: Sequence[Job], num_shards: int) -> list[list[Job]]:
    bounds = [round(i * len(jobs) / num_shards) for i in range(num_shards + 1)]
    return [list(jobs[bounds[i] : bounds[i + 1]]) for i in range(num_shards)]


def _digest(jobs: Sequence[Job], settings: dict) -> str:
    blob = json.dumps({"settings": settings, "keys": [j.key for j in jobs]}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def complete_sidecar(root: str, name: str, digest: str) -> dict | None:
    """The sidecar of shard `name` when the shard is complete for inputs of `digest`."""
    try:
        side = json.loads(files.read_text(files.join(root, name + ".json")))
    except (OSError, ValueError):
        return None
    if side.get("digest") != digest or not files.isfile(files.join(root, name)):
        return None
    return side


def remove_stale(root: str, split: str, keep: set[str]) -> None:
    """Deletes shards of an earlier run with another shard count (and leftover temp files)."""
    split_dir = files.join(root, split)
    for fname in files.listdir(split_dir):
        rel = f"{split}/{fname}"
        if rel not in keep and rel.removesuffix(".json") not in keep:
            files.remove(files.join(split_dir, fname))


MapFn = Callable[[Callable[[Job], Result], Sequence[Job]], Iterator[Result]]


@contextlib.contextmanager
def worker_pool(workers: int, initializer: Callable | None = None) -> Iterator[MapFn]:
    """A map over jobs, in job order: a spawn process pool when workers > 0, else in-process.

    spawn, not fork: the caller may be a trainer process with JAX threads running. One pool can
    serve several write_split calls (the demo corpus loads its voice once per worker).
    """
    if workers <= 0:
        if initializer is not None:
            initializer()
        yield lambda fn, jobs: map(fn, jobs)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer) as pool:
        yield lambda fn, jobs: pool.imap(fn, jobs, chunksize=1)


def _local_tmp(root: str, name: str) -> str:
    """Where a shard is written before it is published: beside it on a local disk (the final
    rename stays on one filesystem), in the local temp directory for object storage."""
    if not files.is_remote(root):
        return os.path.join(root, name + ".tmp")
    fd, tmp = tempfile.mkstemp(suffix=".array_record")
    os.close(fd)
    return tmp


def write_shard(root: str, name: str, results, n: int, pbar=None) -> dict:
    """Writes the records of n (job, result) pairs of `results` as shard `name` and publishes
    it; returns its sidecar without the digest. Skipped results are listed with their reason."""
    tmp = _local_tmp(root, name)
    try:
        return _fill_shard(tmp, root, name, results, n, pbar)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fill_shard(tmp: str, root: str, name: str, results, n: int, pbar) -> dict:
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    side: dict[str, Any] = {
        "num_examples": 0,
        "seconds": 0.0,
        "max_seconds": 0.0,
        "min_seconds": None,
        "label_names": [],
        "skipped": [],
    }
    labels: set[str] = set()
    for _ in range(n):
        job, res = next(results)
        if pbar is not None:
            pbar.update(1)
        if res.record is None:
            side["skipped"].append({"path": job.key, "reason": res.reason})
            continue
        writer.write(res.record)
        side["num_examples"] += 1
        side["seconds"] += res.seconds
        side["max_seconds"] = max(side["max_seconds"], res.seconds)
        side["min_seconds"] = min(side["min_seconds"] or res.seconds, res.seconds)
        labels.update(res.label_names)
    writer.close()
    if files.is_remote(root):
        files.publish(tmp, files.join(root, name))
    else:
        os.replace(tmp, os.path.join(root, name))
    side["label_names"] = sorted(labels)
    return side


def plan_split(split: str, jobs: Sequence[Job], num_shards: int, settings: dict):
    """(shard names, job groups, digests) of a split: the layout both prepare engines share."""
    num_shards = max(1, min(num_shards, len(jobs)))
    groups = _split_jobs(jobs, num_shards)
    return shard_names(split, num_shards), groups, [_digest(g, settings) for g in groups]


def write_split(
    root: str,
    split: str,
    jobs: Sequence[Job],
    fn: Callable[[Job], Result],
    *,
    num_shards: int,
    map_fn: MapFn,
    settings: dict,
    desc: str,
) -> dict:
    """Writes (or completes) root/<split>/ shards; returns the split summary for dataset_info."""
    files.makedirs(files.join(root, split))
    names, groups, digests = plan_split(split, jobs, num_shards, settings)
    sides = [complete_sidecar(root, nm, d) for nm, d in zip(names, digests)]
    remove_stale(root, split, set(names))
    todo = [i for i, s in enumerate(sides) if s is None]
    todo_jobs = [j for i in todo for j in groups[i]]
    done = len(jobs) - len(todo_jobs)
    with tqdm(total=len(jobs), initial=done, desc=desc, unit="file", smoothing=0.1) as pbar:
        stream = zip(todo_jobs, map_fn(fn, todo_jobs))
        for i in todo:
            side = write_shard(root, names[i], stream, len(groups[i]), pbar)
            side["digest"] = digests[i]
            write_json_atomic(files.join(root, names[i] + ".json"), side)
            sides[i] = side
    return summary(names, sides, settings)


def summary(names: list[str], sides: list[dict], settings: dict) -> dict:
    seconds = sum(s["seconds"] for s in sides)
    mins = [s["min_seconds"] for s in sides if s["min_seconds"] is not None]
    skipped = [k for s in sides for k in s["skipped"]]
    return {
        "num_examples": sum(s["num_examples"] for s in sides),
        "seconds": seconds,
        "hours": seconds / 3600.0,
        "max_seconds": max((s["max_seconds"] for s in sides), default=0.0),
        "min_seconds": min(mins, default=0.0),
        "encoding": settings.get("encoding", ""),
        "shards": names,
        "label_names": sorted({n for s in sides for n in s["label_names"]}),
        "num_skipped": len(skipped),
        "skipped": skipped,
    }
