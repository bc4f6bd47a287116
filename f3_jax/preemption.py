"""Stop requests: SIGTERM (or a TPU maintenance notice) becomes a save at a step boundary.

With one process a SIGTERM handler sets a flag. With several, every process must stop at the
same step, so the decision comes from JAX's preemption sync point, which all processes reach
together (jax.distributed installs the SIGTERM notifier).

A Cloud TPU VM is told of host maintenance through the GCE metadata server, not by a signal.
`MaintenanceWatcher` long-polls that notice in a thread and turns it into a SIGTERM to its own
process, so it takes the same path as a preemption.
"""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request

import jax
from absl import logging
from jax.experimental import multihost_utils

GCE_MAINTENANCE_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/maintenance-event"
)


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


class MaintenanceWatcher:
    """Polls the metadata server's maintenance-event; any value but NONE sends SIGTERM here.

    The server answers a `wait_for_change` request when the value changes (or after its
    timeout), so the thread costs nothing between events. Where no server answers (not a
    Cloud VM), the thread logs once and ends.
    """

    def __init__(self, url: str = GCE_MAINTENANCE_URL, timeout_s: float = 3600.0):
        self.url = url
        self.timeout_s = timeout_s
        self.event: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance-watch", daemon=True)

    def start(self) -> MaintenanceWatcher:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def _get(self, wait: bool) -> str:
        url = self.url + ("?wait_for_change=true" if wait else "")
        request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
        with urllib.request.urlopen(request, timeout=self.timeout_s if wait else 5) as reply:
            return reply.read().decode().strip()

    def _run(self) -> None:
        wait = False  # the first read returns the current value at once
        while not self._stop.is_set():
            try:
                value = self._get(wait)
            except (urllib.error.URLError, OSError) as e:
                if not wait:
                    logging.info("no maintenance notices from %s (%s)", self.url, e)
                    return
                continue  # a long poll that timed out: ask again
            wait = True
            if value and value != "NONE" and not self._stop.is_set():
                self.event = value
                logging.warning("host maintenance notice %r: stopping as on SIGTERM", value)
                os.kill(os.getpid(), signal.SIGTERM)
                return
