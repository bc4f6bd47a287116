"""The fit verdict of a TPU compile from its buffer assignment, before code generation ends.

The TPU compiler assigns buffers (and fails a program that does not fit in HBM) in a minute
or two, then spends most of a long compile generating code: 45 minutes for `ae_24k`'s train
step on a 2-core machine. What fits is known at the first point. `EarlyVerdict` watches the
compile's dump directory on a thread; once XLA's memory-usage report is written and the
compiler has not failed within a grace period, it hands a report of that memory to a callback
(the CLI writes it and ends the process: `--memory_only`). A program that does not fit fails
as usual, with the compiler's own message. The memory is XLA's assignment of the "default"
memory space, not `memory_analysis()` of a finished executable: it has no cost analysis and
no collectives, and the status says so ("assigned").
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import threading
import time
from collections.abc import Callable

from f3_jax.aot import hlo
from f3_jax.aot.chips import Chip, GiB

GRACE_SECONDS = 10.0  # the compiler's out-of-memory error follows its report within seconds
POLL_SECONDS = 1.0
# The finished compiles' memory_analysis() totals were 1.12-1.22x the buffer assignment's of
# the same program (flow_24k 1.79 / 1.60 GiB, ae_24k 5.37 / 4.42, repr_24k on v6e 11.60 /
# 9.79: the code, and what the passes after the assignment add): the verdict from the
# assignment alone is taken on the assignment times this.
GROWTH = 1.25


class EarlyVerdict:
    """A daemon thread calling `on_assigned(report)` once the compile dumping to `dump` has
    assigned its buffers, unless `finished()` was called first."""

    def __init__(
        self,
        dump: str,
        chip: Chip,
        on_assigned: Callable[[dict], None],
        base: dict,
        grace: float = GRACE_SECONDS,
    ):
        self._dump, self._chip, self._callback, self._base = dump, chip, on_assigned, base
        self._grace = grace
        self._done = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="early-verdict")
        self._thread.start()

    def finished(self) -> None:
        """The compile ended (compiled or failed): its own report wins."""
        self._done.set()

    def _watch(self) -> None:
        assigned = None
        while assigned is None:
            if self._done.wait(POLL_SECONDS):
                return
            assigned = hlo.assigned_bytes(self._dump)
        if self._done.wait(self._grace):
            return
        report = self.report(assigned)
        # The callback may end the process (--memory_only): the dump is not needed any more.
        shutil.rmtree(self._dump, ignore_errors=True)
        self._callback(report)

    def report(self, assigned: int) -> dict:
        hbm, estimate = self._chip.hbm_bytes, math.ceil(assigned * GROWTH)
        return self._base | {
            "status": "assigned",
            "compile_seconds": time.perf_counter() - self._start,
            "memory": {"assigned": assigned, "total": estimate, "hbm": hbm, "growth": GROWTH},
            "verdict": (
                f"fits (buffer assignment x {GROWTH})"
                if estimate <= hbm
                else f"does not fit by {(estimate - hbm) / GiB:.2f} GiB (buffer assignment x "
                f"{GROWTH})"
            ),
            "largest_buffers": [dataclasses.asdict(b) for b in hlo.largest_buffers(self._dump, 5)],
        }
