"""Overlapping windows that make a convolutional codec's pass over any length exact.

Long inputs are cut into overlapping windows of one fixed length; each window keeps only its
centre, at least one receptive-field radius away from the window's cut edges, so the result
equals a one-shot pass over the whole input. The windows at the signal's ends are aligned
with those ends, where the one-shot pass sees the same zero padding inside every
convolution. A signal shorter than a window is one window padded with zeros to a length of a
short ladder (`padded_length`), and the model is told how much of it is signal (`valid`: the
codec zeroes every activation past it, `models.autoencoder.zero_past`), which keeps it exact:
padding the *input* alone would not be, since biases make the padded region's activations
non-zero. So a 10 s clip decodes as one window of about its own length, and a few shapes
serve every length. `ready_windows` gives the same windows as a signal arrives block by
block, for streaming. Also the block helpers of the streams.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator

import jax
import ml_collections
import numpy as np

from f3_jax.models.autoencoder import receptive_field

PAD_STEPS = 16  # lengths a short signal is padded to: multiples of window / PAD_STEPS


@dataclasses.dataclass(frozen=True)
class Window:
    """A window [start, start + length) of a signal, in frames, of which the first `valid`
    are signal (the rest: zero padding past its end); its output [keep_start, keep_end)
    (absolute frames) is exact."""

    start: int
    length: int
    keep_start: int
    keep_end: int
    valid: int


def context_frames(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """Frames of context each side of a kept chunk: (encoder, decoder).

    `receptive_field` gives the full span; half of it is the radius. One more frame covers
    what the half does not: the span is not centred exactly on a frame (padding of even
    kernels is asymmetric, and an encoder frame owns `hop` samples, not one).
    """
    enc_span, dec_span = receptive_field(config)
    hop = int(config.model.hop)
    return math.ceil(enc_span / 2 / hop) + 1, math.ceil(dec_span / 2) + 1


def window_length(chunk_frames: int, context: int) -> int:
    """Frames of a window that keeps `chunk_frames` with `context` frames each side."""
    return chunk_frames + 2 * context


def padded_length(total: int, length: int) -> int:
    """The window length a signal of `total` <= `length` frames is padded to: the next
    multiple of length / PAD_STEPS (at most `length`), so that at most PAD_STEPS shapes serve
    every short signal and the padding costs at most 1 / PAD_STEPS of a window."""
    step = math.ceil(length / PAD_STEPS)
    return min(length, -(-total // step) * step)


def plan_windows(total: int, length: int, context: int) -> list[Window]:
    """Windows whose kept parts tile [0, total) frames exactly once."""
    if total == 0:
        return []
    if total <= length:
        return [Window(0, padded_length(total, length), 0, total, total)]
    core = length - 2 * context
    windows = []
    for keep_start in range(0, total, core):
        # Clamp into the signal: the first and last windows sit at the ends, where the
        # convolutions' own zero padding matches the one-shot pass.
        start = min(max(keep_start - context, 0), total - length)
        windows.append(Window(start, length, keep_start, min(keep_start + core, total), length))
    return windows


def ready_windows(
    available: int, final: bool, length: int, context: int, next_keep: int
) -> list[Window]:
    """The windows of `plan_windows(total, ...)` keeping frames from `next_keep` on that are
    known once `available` frames have arrived; all of them when `final` (total = available).

    A window that ends before the frames that have arrived is the same for every total
    past them (a total of exactly one window is one window keeping everything).
    """
    if final:
        return [w for w in plan_windows(available, length, context) if w.keep_start >= next_keep]
    core = length - 2 * context
    windows = []
    keep_start = next_keep
    while max(keep_start - context, 0) + length < available:
        start = max(keep_start - context, 0)
        windows.append(Window(start, length, keep_start, keep_start + core, length))
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
