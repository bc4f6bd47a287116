"""Stop requests: SIGTERM (or a TPU maintenance notice) becomes a save at a step boundary.

With one process a SIGTERM handler sets a flag. With several, every process must stop at the
same step, so the decision comes from JAX's preemption sync point, which all processes reach
together (jax.distributed installs the SIGTERM notifier).
"""

from __future__ import annotations

import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
    def __init__(self):
        self._requested = False
        self._multi = jax.process_count() > 1
        if not self._multi:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
        self._requested = True

    def should_stop(self, step: int) -> bool:
        if self._multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested
