"""Progress lines of a long evaluation."""

from __future__ import annotations

import contextlib
import time

from absl import logging


class EvalProgress:
    """Where a long evaluation is: a line when a phase starts, one at most every `every_s`
    seconds with its count, and one when it ends with the count and the time it took.

        eval step 200 (valid): probes: 64/256 training examples, 41 s
    """

    def __init__(self, step: int, split: str, every_s: float = 20.0):
        self.prefix, self.every_s = f"eval step {step} ({split})", every_s

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "examples"):
        """Yields `advance(n)`; the phase's lines say `done/total unit`."""
        started = last = time.monotonic()
        count = 0
        of = f"/{total}" if total is not None else ""
        logging.info("%s: %s: %s%s %s", self.prefix, name, 0, of, unit)

        def advance(n: int = 1) -> None:
            nonlocal count, last
            count += n
            if time.monotonic() - last >= self.every_s:
                last = time.monotonic()
                logging.info(
                    "%s: %s: %d%s %s, %.0f s", self.prefix, name, count, of, unit, last - started
                )

        yield advance
        logging.info(
            "%s: %s done: %d %s in %.1f s",
            self.prefix, name, count, unit, time.monotonic() - started,
        )  # fmt: skip
