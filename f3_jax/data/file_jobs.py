"""The per-file work of corpus preparation, shared by both engines (prepare.py's local pool
and beam_prepare.py's pipeline): finding the audio, one job per file with its transcript and
labels, and preparing one file into a record (or the reason it is skipped)."""

from __future__ import annotations

import os

from f3_jax.data import files, records
from f3_jax.data.audio_io import AUDIO_EXTENSIONS, load_audio
from f3_jax.data.errors import DataError
from f3_jax.data.shards import Job, Result
from f3_jax.data.transcripts import Entry, LayoutTranscripts, read_manifest

# Shorter clips are skipped. 0.1 s is 5 latent frames of the 24 kHz configs (hop 480 = 0.02 s),
# more than one stage-3 patch of 4 frames; a shorter clip holds no word to transcribe. (Eval
# still skips, and counts, clips its metrics cannot score: PESQ needs about a quarter second.)
DEFAULT_MIN_SECONDS = 0.1


def find_audio(pattern: str) -> tuple[list[str], str]:
    """Sorted absolute audio paths (or URLs) under a directory or matching a glob, and their
    common root. Local or on object storage (gs://...)."""
    remote = files.is_remote(pattern)
    if files.isdir(pattern):
        root = pattern.rstrip("/") if remote else os.path.abspath(pattern)
        paths = [p for p in files.walk(root) if p.lower().endswith(AUDIO_EXTENSIONS)]
    else:
        paths = files.glob(pattern)
        root = _common_dir(paths)
    if not paths:
        raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found at {pattern!r}")
    return sorted(paths), root


def _common_dir(paths: list[str]) -> str:
    """The deepest folder holding every path ('' for none)."""
    if not paths:
        return ""
    if not files.is_remote(paths[0]):
        root = os.path.commonpath(paths)
        return os.path.dirname(root) if os.path.isfile(root) else root
    dirs = [p.rsplit("/", 1)[0].split("/") for p in paths]
    common = dirs[0]
    for d in dirs[1:]:
        n = next((i for i, (a, b) in enumerate(zip(common, d)) if a != b), min(len(common), len(d)))
        common = common[:n]
    return "/".join(common)


def _uid(path: str, root: str) -> str:
    if files.is_remote(path):
        return os.path.splitext(path[len(root) :].lstrip("/"))[0]
    return os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")


def make_jobs(
    paths: list[str],
    root: str,
    manifest: str | None,
    sample_rate: int,
    encoding: str,
    min_seconds: float = DEFAULT_MIN_SECONDS,
) -> list[Job]:
    entries = read_manifest(manifest) if manifest else {}
    layout = LayoutTranscripts()
    jobs = []
    for p in paths:
        entry = entries.get(files.canonical(p)) or Entry(text=layout(p))
        uid = entry.uid or _uid(p, root)
        args = (p, uid, entry.text, dict(entry.labels), sample_rate, encoding, min_seconds)
        jobs.append(Job(p, args))
    return jobs


def prepare_one(job: Job) -> Result:
    """Worker: one file -> record bytes, or the reason it is skipped. Never raises."""
    path, uid, text, labels, sample_rate, encoding, min_seconds = job.args
    try:
        wav = load_audio(path, sample_rate)
        # At least one sample even with --min_seconds 0: resampling can leave none.
        if wav.shape[0] < max(1, round(min_seconds * sample_rate)):
            return Result(
                None,
                reason=f"too short: {wav.shape[0]} samples ({wav.shape[0] / sample_rate:.4f} s) "
                f"at {sample_rate} Hz, under min_seconds={min_seconds:g}",
            )
        rec = records.encode(
            wav, sample_rate=sample_rate, uid=uid, text=text, labels=labels, encoding=encoding
        )
    except Exception as e:  # any failure of one file must not stop the others
        return Result(None, reason=f"{type(e).__name__}: {e}")
    return Result(rec, seconds=wav.shape[0] / sample_rate, label_names=tuple(labels))
