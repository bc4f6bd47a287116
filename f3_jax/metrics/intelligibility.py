"""Wideband PESQ and STOI for batches of (reference, estimate) waveforms, on host threads.

Both metrics are reference C / numpy implementations (the `pesq` and `pystoi` packages), so
they run on the host, one clip per task in a ThreadPoolExecutor; results come back in input
order whatever the scheduling, so the output is deterministic.

Inputs are either a padded (N, L) array with `lengths` (N,) or a `mask` (N, L) (1 = audio, padding
at the end), or a sequence of 1-D arrays. A reference and its estimate are cut to their common
length, as decoders may return a few samples more than they were given.

Skipped clips: a clip a metric cannot score is NaN (skipped) instead of stopping the evaluation,
and `summarize` counts them, which an evaluation reports next to the mean (`skipped/pesq`).
PESQ refuses some clips (the `pesq` package raises `NoUtterancesError` on silence and
`BufferTooShortError` on clips under about a quarter second); an all-zero reference or estimate
is skipped without calling PESQ (it would divide by its zero peak). STOI skips an all-zero
reference (pystoi scores it 0) and returns the sentinel 1e-5 when a clip has too few non-silent
frames (pystoi warns); a clip shorter than one of its frames makes pystoi raise. Any other
exception of either library skips that clip too, with a warning in the log. A silent estimate
of a real reference is scored by STOI (0: nothing intelligible), not skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pesq as pesq_lib
import pystoi

from f3_jax.data.audio_io import resample

PESQ_RATE = 16000  # wideband PESQ (P.862.2) is defined at 16 kHz only
_STOI_TOO_SHORT = 1e-5  # what pystoi returns instead of a score when too few frames remain

Waves = np.ndarray | Sequence[np.ndarray]

_log = logging.getLogger(__name__)


def unpad(
    wavs: Waves, lengths: Sequence[int] | np.ndarray | None = None, mask: np.ndarray | None = None
) -> list[np.ndarray]:
    """Padded batch (or sequence) -> list of float32 1-D clips, each cut to its length.

    `mask` (N, L) gives the lengths as its row sums (padding is assumed to be at the end).
    """
    if mask is not None:
        if lengths is not None:
            raise ValueError("give lengths or mask, not both")
        lengths = np.asarray(mask).astype(bool).sum(axis=-1)
    clips = [np.asarray(w, dtype=np.float32).reshape(-1) for w in wavs]
    if lengths is None:
        return clips
    if len(lengths) != len(clips):
        raise ValueError(f"{len(lengths)} lengths for {len(clips)} clips")
    return [c[: int(n)] for c, n in zip(clips, lengths)]


def _pairs(refs: Waves, ests: Waves, lengths, mask) -> list[tuple[np.ndarray, np.ndarray]]:
    refs, ests = unpad(refs, lengths, mask), unpad(ests, lengths, mask)
    if len(refs) != len(ests):
        raise ValueError(f"{len(refs)} references for {len(ests)} estimates")
    pairs = []
    for r, e in zip(refs, ests):
        n = min(r.shape[0], e.shape[0])
        pairs.append((r[:n], e[:n]))
    return pairs


def _map_pairs(
    fn: Callable[[np.ndarray, np.ndarray], float],
    pairs: list[tuple[np.ndarray, np.ndarray]],
    num_threads: int,
) -> np.ndarray:
    """fn over pairs on a thread pool; executor.map keeps the input order."""
    if num_threads <= 1 or len(pairs) <= 1:
        return np.asarray([fn(r, e) for r, e in pairs], dtype=np.float64)
    with ThreadPoolExecutor(max_workers=min(num_threads, len(pairs))) as pool:
        return np.asarray(list(pool.map(lambda p: fn(*p), pairs)), dtype=np.float64)


def _skipped(metric: str, error: Exception) -> float:
    # One clip's failure must not stop an evaluation of many; the count reports it, the log
    # says why (a library's refusal of the clip is expected and not logged).
    if not isinstance(error, pesq_lib.PesqError):
        _log.warning("%s skipped a clip: %s: %s", metric, type(error).__name__, error)
    return float("nan")


def _pesq_one(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
    if not ref.any() or not est.any():
        return float("nan")
    try:
        ref16 = resample(ref, sample_rate, PESQ_RATE)
        est16 = resample(est, sample_rate, PESQ_RATE)
        return float(pesq_lib.pesq(PESQ_RATE, ref16, est16, "wb"))
    except Exception as e:  # no utterances / too short: a property of the clip, not a bug
        return _skipped("PESQ", e)


def _stoi_one(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
    if not ref.any():
        return float("nan")  # nothing to be intelligible: pystoi would say 0
    try:
        # pystoi resamples to its internal 10 kHz itself, so it gets the native rate.
        score = float(pystoi.stoi(ref, est, sample_rate, extended=False))
    except Exception as e:  # e.g. numpy's AxisError on a clip shorter than one frame
        return _skipped("STOI", e)
    return float("nan") if score == _STOI_TOO_SHORT else score


def pesq_wb(
    refs: Waves,
    ests: Waves,
    sample_rate: int,
    num_threads: int = 4,
    *,
    lengths: Sequence[int] | np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Wideband PESQ (MOS-LQO, about 1.0 to 4.64) per clip, (N,) float64; NaN where skipped.

    Clips are resampled to 16 kHz with soxr first.
    """
    pairs = _pairs(refs, ests, lengths, mask)
    return _map_pairs(lambda r, e: _pesq_one(r, e, sample_rate), pairs, num_threads)


def stoi(
    refs: Waves,
    ests: Waves,
    sample_rate: int,
    num_threads: int = 4,
    *,
    lengths: Sequence[int] | np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """STOI (0 to 1) per clip, (N,) float64; NaN (skipped) for clips too short or silent to
    score, or that pystoi fails on."""
    pairs = _pairs(refs, ests, lengths, mask)
    return _map_pairs(lambda r, e: _stoi_one(r, e, sample_rate), pairs, num_threads)


def summarize(scores: np.ndarray) -> dict[str, float]:
    """Mean over the finite scores, and how many clips were valid and skipped (NaN)."""
    scores = np.asarray(scores, dtype=np.float64)
    valid = np.isfinite(scores)
    mean = float(scores[valid].mean()) if valid.any() else float("nan")
    return {"mean": mean, "num_valid": int(valid.sum()), "num_skipped": int((~valid).sum())}
