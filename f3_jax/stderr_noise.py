"""Drops the asyncio noise that a failed Orbax restore prints straight to file descriptor 2.

When one read of a broken checkpoint fails, Orbax's restore returns at once and closes its
event loop while tensorstore still completes the other reads; each late completion calls
`loop.call_soon_threadsafe` on the closed loop and tensorstore prints that RuntimeError's
traceback itself, from C++ threads, bypassing `sys.excepthook` and logging. Hundreds of
such lines buried the one line that says which file is broken, so while a restore runs,
file descriptor 2 goes to a temporary file. After a successful restore every line made only
of those tracebacks' fragments is dropped and the rest goes to the real stderr; after a
failed one, whose stragglers print later and interleave mid-word, all of it is dropped.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator

_FRAGMENTS = re.compile(
    r"Traceback \(most recent call last\):"
    r"|File \"[^\"]*asyncio[/\\]base_events\.py\", line \d+, in "
    r"(call_soon_threadsafe|_check_closed)"
    r"|self\._check_closed\(\)"
    r"|raise RuntimeError\('Event loop is closed'\)"
    r"|RuntimeError: Event loop is closed"
)


def is_noise(line: str) -> bool:
    """True for a line (possibly several interleaved by threads) made only of fragments of
    the closed-event-loop traceback, or blank (the tracebacks' threads interleave)."""
    if not line.strip() or "Event loop is closed" in line:
        return True
    return bool(_FRAGMENTS.search(line)) and not _FRAGMENTS.sub("", line).strip()


def without_noise(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not is_noise(line))


def _wait_until_quiet(sink, settle_s: float, max_wait_s: float) -> None:
    """Until nothing has been written to `sink` for `settle_s` (at most `max_wait_s`): the
    reads still in flight print their tracebacks when they complete, later under load."""
    deadline = time.monotonic() + max_wait_s
    size, since = os.fstat(sink.fileno()).st_size, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < settle_s:
        time.sleep(0.1)
        now = os.fstat(sink.fileno()).st_size
        if now != size:
            size, since = now, time.monotonic()


@contextlib.contextmanager
def asyncio_noise_dropped(settle_s: float = 1.0, max_wait_s: float = 10.0) -> Iterator[None]:
    """Runs the body with stderr captured. When it succeeds, what it printed is replayed
    without the noise; when it raises, everything it printed is dropped (threads interleave
    the tracebacks mid-word, so no line filter catches them all) once the stragglers have
    printed, and the caller reports the failure itself."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            _wait_until_quiet(sink, settle_s, max_wait_s)
            gc.collect()  # "Future exception was never retrieved" is printed here
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = "" if failed else without_noise(sink.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
