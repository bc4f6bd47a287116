"""`python -m f3_jax.data.prepare --engine beam`: the same preparation as an Apache Beam pipeline.

The launcher does what must see every file once (as the local engine does, with the same
code): list the input, read the manifest or layout transcripts, cut the files into the same
shards with the same digests (shards.plan_split). It writes that plan as JSON lines next to
the output (`OUTPUT/.beam_plan/<split>-NNNNN.jsonl`, 64 shards a file), so that the pipeline
graph stays small for millions of files. The pipeline then:

    plan files ─▶ read (one element per shard) ─▶ Reshuffle (spreads shards over workers)
      ─▶ WriteShard: a shard whose sidecar matches is reused, others are decoded file by file
         (file_jobs.prepare_one: the local engine's code), written to a local file and published
         whole (shards.write_shard: a rename locally, one upload on gs://), then its sidecar
      ─▶ all sidecars combined ─▶ dataset_info.json written (last, once every shard is there)

Counts travel as Beam metrics (namespace `f3_jax.prepare`: files_written, files_skipped,
shards_written, shards_reused, audio_seconds) and the list of skipped files with their reasons
in the sidecars that the combine gathers; no worker sees more than its shards. A failed run
leaves complete shards (and their sidecars) in place: a rerun reuses them and writes only the
others. Both engines write the same shard names, records and sidecars for the same input, so
either can complete what the other started.

Paths go through etils.epath (data/files.py), not Beam's filesystems, so that the workers
read and write `gs://` the same way as the rest of f3_jax (gcsfs on the workers).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator

from f3_jax.data import files
from f3_jax.data.dataset_info import drop_split, update_info, write_json_atomic
from f3_jax.data.errors import DataError
from f3_jax.data.file_jobs import prepare_one
from f3_jax.data.shards import (
    Job,
    complete_sidecar,
    plan_split,
    remove_stale,
    summary,
    write_shard,
)

PLAN_DIR = ".beam_plan"
SHARDS_PER_PLAN_FILE = 64
NAMESPACE = "f3_jax.prepare"
COUNTERS = ("files_written", "files_skipped", "shards_written", "shards_reused")


def _import_beam():
    try:
        import apache_beam as beam
    except ImportError:
        raise DataError(
            "--engine beam needs Apache Beam: pip install 'f3_jax[beam]' (or apache-beam)"
        ) from None
    return beam


def write_plan(output: str, split: str, names, groups, digests) -> list[str]:
    """The plan files of a split: one JSON line per shard (index, name, digest, jobs)."""
    paths = []
    for first in range(0, len(names), SHARDS_PER_PLAN_FILE):
        lines = []
        for i in range(first, min(first + SHARDS_PER_PLAN_FILE, len(names))):
            jobs = [[j.key, list(j.args)] for j in groups[i]]
            lines.append(
                json.dumps({"shard": i, "name": names[i], "digest": digests[i], "jobs": jobs})
            )
        path = files.join(output, PLAN_DIR, f"{split}-{first // SHARDS_PER_PLAN_FILE:05d}.jsonl")
        files.makedirs(files.dirname(path))
        files.write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
        paths.append(path)
    return paths


def read_plan(path: str) -> Iterator[dict]:
    for line in files.read_text(path).splitlines():
        if line.strip():
            yield json.loads(line)


def _counter(name: str):
    from apache_beam.metrics import Metrics

    return Metrics.counter(NAMESPACE, name)


def shard_task(task: dict, output: str) -> tuple[int, dict]:
    """One shard: reused when complete, else prepared and published. (index, sidecar)."""

    name, digest = task["name"], task["digest"]
    side = complete_sidecar(output, name, digest)
    if side is not None:
        _counter("shards_reused").inc()
        return task["shard"], side
    jobs = [Job(key, tuple(args)) for key, args in task["jobs"]]
    side = write_shard(output, name, ((j, prepare_one(j)) for j in jobs), len(jobs))
    side["digest"] = digest
    write_json_atomic(files.join(output, name + ".json"), side)
    _counter("shards_written").inc()
    _counter("files_written").inc(side["num_examples"])
    _counter("files_skipped").inc(len(side["skipped"]))
    return task["shard"], side


def write_info(sides: list[tuple[int, dict]], *, output, split, names, settings) -> None:
    """The final step: dataset_info.json from every shard's sidecar, in shard order."""
    by_index = dict(sides)
    if sorted(by_index) != list(range(len(names))):
        raise RuntimeError(f"{len(by_index)} of {len(names)} shards reported back")
    split_summary = summary(names, [by_index[i] for i in range(len(names))], settings)
    update_info(
        output,
        {split: split_summary},
        sample_rate=settings["sample_rate"],
        encoding=settings["encoding"],
    )


def build(pipeline, *, output, split, plan_files, names, settings):
    """Adds the preparation of one split to a Beam pipeline."""
    beam = _import_beam()
    return (
        pipeline
        | "plan files" >> beam.Create(plan_files)
        | "shards" >> beam.FlatMap(read_plan)
        | "spread" >> beam.Reshuffle()
        | "write shards" >> beam.Map(shard_task, output)
        | "gather" >> beam.combiners.ToList()
        | "dataset_info"
        >> beam.Map(write_info, output=output, split=split, names=names, settings=settings)
    )


def counters(result) -> dict[str, int]:
    """The pipeline's f3_jax.prepare counters (committed values where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter

    out = dict.fromkeys(COUNTERS, 0)
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def run(
    jobs: list[Job],
    output: str,
    *,
    split: str,
    num_shards: int,
    settings: dict,
    files_per_shard: int,
    pipeline_args: list[str],
) -> dict[str, int]:
    """Prepares `jobs` as `split` of `output` on the runner of `pipeline_args` (prepare.py
    checked the output and made the jobs); returns the counters."""
    beam = _import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    num_shards = num_shards or math.ceil(len(jobs) / files_per_shard)
    files.makedirs(files.join(output, split))
    drop_split(output, split)  # listed again by the pipeline's last step
    names, groups, digests = plan_split(split, jobs, num_shards, settings)
    remove_stale(output, split, set(names))
    plan_files = write_plan(output, split, names, groups, digests)
    try:
        options = PipelineOptions(pipeline_args)
    except SystemExit:  # Beam's own argparse rejected an option; it printed why
        raise DataError(f"bad Beam pipeline options: {' '.join(pipeline_args)}") from None
    pipeline = beam.Pipeline(options=options)
    build(
        pipeline, output=output, split=split, plan_files=plan_files, names=names, settings=settings
    )
    result = pipeline.run()
    result.wait_until_finish()
    for path in plan_files:
        files.remove(path)
    if not files.is_remote(output):  # object storage has no folders to leave behind
        with contextlib.suppress(OSError):
            os.rmdir(files.join(output, PLAN_DIR))
    return counters(result)
