"""The eval pipeline: deterministic, whole utterances, a few fixed shapes, the same on every host.

Each of the first `max_examples` records of the split is cut to data.eval_max_seconds (capped at
the longest bucket) and assigned the shortest of data.eval_bucket_seconds that holds it. Buckets
are visited shortest first; each is cut into global batches of batch_size * process_count
utterances, of which process p takes rows [p * batch_size, (p + 1) * batch_size). Rows short of
a full batch are masked-out dummies with `valid` = 0. A bucket that holds fewer utterances than
one global batch gets a batch of just enough rows (rounded up to `row_multiple` per process, the
process's devices on the batch axes): evaluating 2 clips with data.eval_batch_size=8 runs the
model on 2 rows, not 8. Every process computes the same plan, so all run the same number of
batches with the same shapes (a jit eval step compiles once per bucket).

Batch keys: `audio` (B, L) float32, `mask` (B, L), `valid` (B,) float32, `text`, `id` (B,)
object arrays, `label_<name>` (B,) float32 for each numeric label of the records (NaN where a
record lacks it, 0 in dummy rows), and `num_skipped` (int64 scalar: undecodable records so far).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from f3_jax.data.crops import eval_clip, num_samples_at, pad_to
from f3_jax.data.errors import AudioDecodeError, DataError
from f3_jax.data.sources import SplitSource, open_split


@dataclasses.dataclass
class _Plan:
    buckets: list[int]  # lengths in samples, ascending
    members: dict[int, list[int]]  # bucket length -> record indices, in record order
    label_names: tuple[str, ...]
    num_skipped: int


def _bucket_lengths(data_cfg, sample_rate: int) -> tuple[list[int], int]:
    buckets = sorted({round(s * sample_rate) for s in data_cfg.eval_bucket_seconds})
    if not buckets or buckets[0] <= 0:
        raise DataError(
            f"data.eval_bucket_seconds={tuple(data_cfg.eval_bucket_seconds)} needs positive lengths"
        )
    return buckets, min(round(data_cfg.eval_max_seconds * sample_rate), buckets[-1])


def _plan(split: SplitSource, n: int, buckets: list[int], max_len: int, sample_rate: int) -> _Plan:
    members: dict[int, list[int]] = {b: [] for b in buckets}
    names: set[str] = set(split.label_names)
    skipped = 0
    for i in range(n):
        try:
            u = split.parse(split.source[i])
        except AudioDecodeError:
            skipped += 1
            continue
        length = min(num_samples_at(u, sample_rate), max_len)
        if length == 0:
            skipped += 1
            continue
        members[next(b for b in buckets if b >= length)].append(i)
        names.update(u.labels)
    return _Plan(buckets, members, tuple(sorted(names)), skipped)


def _batch(
    split: SplitSource,
    rows: list[int],
    batch_size: int,
    length: int,
    max_len: int,
    sample_rate: int,
    names: tuple[str, ...],
) -> tuple[dict, int]:
    audio = np.zeros((batch_size, length), np.float32)
    mask = np.zeros((batch_size, length), np.float32)
    valid = np.zeros(batch_size, np.float32)
    text = np.array([""] * batch_size, dtype=object)
    uid = np.array([""] * batch_size, dtype=object)
    labels = {n: np.zeros(batch_size, np.float32) for n in names}
    failed = 0
    for r, i in enumerate(rows):
        try:
            u = split.parse(split.source[i])
            audio[r], mask[r] = pad_to(eval_clip(u, sample_rate, max_len), length)
        except AudioDecodeError:  # header read in the plan, payload broken: keep it a dummy
            failed += 1
            continue
        # A clip cut at data.eval_max_seconds no longer matches its transcript.
        whole = num_samples_at(u, sample_rate) <= max_len
        valid[r], text[r], uid[r] = 1.0, (u.text if whole else ""), u.uid
        for n in names:
            labels[n][r] = u.labels.get(n, np.nan)
    batch = {"audio": audio, "mask": mask, "valid": valid, "text": text, "id": uid}
    batch.update({f"label_{n}": v for n, v in labels.items()})
    return batch, failed


def check_eval_split(data_cfg, sample_rate: int, split: str | None = None) -> int:
    """Raises DataError naming the field unless validation can run on `split` (default
    data.eval_split): the split exists, holds records, and its buckets and batch are sane.
    Returns its number of records. Reads the split's index only, no audio."""
    split = split or data_cfg.eval_split
    if data_cfg.eval_max_seconds <= 0:
        raise DataError(f"data.eval_max_seconds={data_cfg.eval_max_seconds} must be > 0")
    if data_cfg.eval_batch_size < 1:
        raise DataError(f"data.eval_batch_size={data_cfg.eval_batch_size} must be at least 1")
    if data_cfg.eval_max_examples is not None and data_cfg.eval_max_examples < 1:
        raise DataError(f"data.eval_max_examples={data_cfg.eval_max_examples} must be >= 1")
    _bucket_lengths(data_cfg, sample_rate)
    try:
        src = open_split(data_cfg, split, sample_rate)
    except DataError as e:
        raise DataError(f"validation (data.eval_split={split!r}): {e}") from None
    if len(src.source) == 0:
        raise DataError(f"data.eval_split={split!r} of {src.where} holds no records")
    return len(src.source)


def fitted_rows(members: int, batch_size: int, process_count: int, row_multiple: int) -> int:
    """Rows per process of a bucket's batches: batch_size, or fewer when the whole bucket fits
    in one global batch (each process the same number, a multiple of row_multiple)."""
    if members >= batch_size * process_count:
        return batch_size
    per_process = -(-members // process_count)
    return min(batch_size, -(-per_process // row_multiple) * row_multiple)


def eval_batches(
    data_cfg,
    *,
    sample_rate: int,
    split: str,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    max_examples: int | None = None,
    row_multiple: int = 1,
) -> Iterator[dict]:
    """Deterministic eval batches of this process (batch_size per process at most); see the
    module docstring."""
    src = open_split(data_cfg, split, sample_rate)
    buckets, max_len = _bucket_lengths(data_cfg, sample_rate)
    n = len(src.source) if max_examples is None else min(len(src.source), max_examples)
    plan = _plan(src, n, buckets, max_len, sample_rate)
    skipped = plan.num_skipped
    per_global = batch_size * process_count
    for length in plan.buckets:
        idx = plan.members[length]
        rows_here = fitted_rows(len(idx), batch_size, process_count, row_multiple)
        for start in range(0, len(idx), per_global):
            chunk = idx[start : start + per_global]
            rows = chunk[process_index * rows_here : (process_index + 1) * rows_here]
            batch, failed = _batch(
                src, rows, rows_here, length, max_len, sample_rate, plan.label_names
            )
            skipped += failed
            batch["num_skipped"] = np.int64(skipped)
            yield batch
