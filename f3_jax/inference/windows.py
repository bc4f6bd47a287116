"""Overlapping windows that make a convolutional codec's pass over any length exact.

Long inputs are cut into overlapping windows of a few fixed lengths; each window keeps only
its centre, at least one receptive-field radius away from the window's cut edges, so the
result equals a one-shot pass over the whole input. The windows at the signal's ends are
aligned with those ends, where the one-shot pass sees the same zero padding inside every
convolution (padding the *input* with zeros instead would not be equivalent: biases make the
padded region's activations non-zero). `ready_windows` gives the same windows as a signal
arrives block by block, for streaming. Also the block helpers of the streams.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from f3_jax.models.autoencoder import receptive_field


@dataclasses.dataclass(frozen=True)
class Window:
    """A window [start, start + length) of a signal, in frames; its output [keep_start,
    keep_end) (absolute frames) is exact."""

    start: int
    length: int
    keep_start: int
    keep_end: int


def context_frames(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """Frames of context each side of a kept chunk: (encoder, decoder).

    `receptive_field` gives the full span; half of it is the radius. One more frame covers
    what the half does not: the span is not centred exactly on a frame (padding of even
    kernels is asymmetric, and an encoder frame owns `hop` samples, not one).
    """
    enc_span, dec_span = receptive_field(config)
    hop = int(config.model.hop)
    return math.ceil(enc_span / 2 / hop) + 1, math.ceil(dec_span / 2) + 1


def window_lengths(chunk_frames: int, context: int) -> list[int]:
    """Window lengths in frames, largest first: cores chunk_frames, /2, /4, ... >= 2*context.

    Inputs shorter than the largest window use the largest that fits, so that a few shapes
    serve every length, while the overlap overhead stays below 2x.
    """
    lengths, core = [chunk_frames + 2 * context], chunk_frames // 2
    while core >= 2 * context:
        lengths.append(core + 2 * context)
        core //= 2
    return lengths


def plan_windows(total: int, lengths: Sequence[int], context: int) -> list[Window]:
    """Windows whose kept parts tile [0, total) frames exactly once.

    A signal shorter than every window length is one window of its own length (exact, but a
    compile per such length).
    """
    if total == 0:
        return []
    fitting = [n for n in lengths if n <= total]
    if not fitting:
        return [Window(0, total, 0, total)]
    length = max(fitting)
    core = length - 2 * context
    windows = []
    for keep_start in range(0, total, core):
        # Clamp into the signal: the first and last windows sit at the ends, where the
        # convolutions' own zero padding matches the one-shot pass.
        start = min(max(keep_start - context, 0), total - length)
        windows.append(Window(start, length, keep_start, min(keep_start + core, total)))
    return windows


def ready_windows(
    available: int, final: bool, lengths: Sequence[int], context: int, next_keep: int
) -> list[Window]:
    """The windows of `plan_windows(total, ...)` keeping frames from `next_keep` on that are
    known once `available` frames have arrived; all of them when `final` (total = available).

    A window clear of the signal's end is the same for every total past it; and once the
    largest length has arrived, the plan uses the largest length.
    """
    if final:
        return [w for w in plan_windows(available, lengths, context) if w.keep_start >= next_keep]
    length = lengths[0]
    core = length - 2 * context
    windows = []
    keep_start = next_keep
    while max(keep_start - context, 0) + length <= available:
        windows.append(Window(max(keep_start - context, 0), length, keep_start, keep_start + core))
        keep_start += core
    return windows


def batch_size(n: int, limit: int) -> int:
    """n rounded up to a power of two, at most `limit`: few batch shapes, little padding."""
    return min(limit, 1 << max(n - 1, 0).bit_length())


def as_list(x, item_ndim: int) -> tuple[list[np.ndarray], str]:
    """(signals, kind): kind "single" (one item), "stacked" (an array of items) or "list"."""
    if isinstance(x, np.ndarray | jax.Array):
        if x.ndim == item_ndim:
            return [np.asarray(x, np.float32)], "single"
        if x.ndim == item_ndim + 1:
            return [np.asarray(s, np.float32) for s in x], "stacked"
        raise ValueError(f"expected {item_ndim} or {item_ndim + 1} dims, got shape {x.shape}")
    items = [np.asarray(s, np.float32) for s in x]
    for s in items:
        if s.ndim != item_ndim:
            raise ValueError(f"expected items of {item_ndim} dims, got shape {s.shape}")
    return items, "list"


def restore(out: list[np.ndarray], kind: str):
    if kind == "single":
        return out[0]
    return np.stack(out) if kind == "stacked" else out


def round_up(n: int, multiple: int) -> int:
    return n + (-n) % multiple


def pad_to_multiple(blocks: Iterable[np.ndarray], multiple: int) -> Iterator[np.ndarray]:
    """The blocks, then zeros up to a whole multiple of samples (encode's padding)."""
    count = 0
    for block in blocks:
        count += len(block)
        yield block
    if count % multiple:
        yield np.zeros(-count % multiple, np.float32)


def rechunk(
    blocks: Iterable[np.ndarray], size: int, width: int
) -> Iterator[tuple[np.ndarray, int]]:
    """Consecutive (n, width) blocks -> (size, width) chunks, the last zero-padded, each with
    its count of real rows."""
    buf = np.zeros((0, width), np.float32)
    for block in blocks:
        buf = np.concatenate([buf, block])
        while len(buf) >= size:
            yield buf[:size], size
            buf = buf[size:]
    if len(buf):
        yield np.pad(buf, ((0, size - len(buf)), (0, 0))), len(buf)
