"""Drops the asyncio noise that a failed Orbax restore prints straight to file descriptor 2.

When one read of a broken checkpoint fails, Orbax's restore returns at once and closes its
event loop while tensorstore still completes the other reads; each late completion calls
`loop.call_soon_threadsafe` on the closed loop and tensorstore prints that RuntimeError's
traceback itself, from C++ threads, bypassing `sys.excepthook` and logging. Hundreds of
such lines buried the one line that says which file is broken, so while a restore runs,
file descriptor 2 goes to a temporary file; afterwards every line made only of those
tracebacks' fragments is dropped and the rest is written to the real stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
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


@contextlib.contextmanager
def asyncio_noise_dropped() -> Iterator[None]:
    """Runs the body with stderr captured, then replays it without the noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = without_noise(sink.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
