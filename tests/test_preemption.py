"""Stop requests: a SIGTERM and a GCE host-maintenance notice (from a loopback metadata server)
both make PreemptionWatcher ask for a save at the next step boundary."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time

import pytest

from f3_jax.preemption import MaintenanceWatcher, PreemptionWatcher


@pytest.fixture
def restore_sigterm():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


class _Metadata(http.server.BaseHTTPRequestHandler):
    """NONE at first; a long poll (wait_for_change) gets the notice after a short wait."""

    notice = "TERMINATE_ON_HOST_MAINTENANCE"
    headers_seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).headers_seen.append(self.headers.get("Metadata-Flavor"))
        if "wait_for_change=true" in self.path:
            time.sleep(0.3)
            body = self.notice
        else:
            body = "NONE"
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/maintenance-event"
    server.shutdown()


def _wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sigterm_asks_for_a_stop(restore_sigterm):
    watcher = PreemptionWatcher()
    assert not watcher.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    _wait_until(lambda: watcher.should_stop(2))


def test_a_maintenance_notice_stops_like_a_sigterm(restore_sigterm, metadata_server):
    watcher = PreemptionWatcher()
    maintenance = MaintenanceWatcher(metadata_server, timeout_s=10).start()
    _wait_until(lambda: watcher.should_stop(1))
    assert maintenance.event == "TERMINATE_ON_HOST_MAINTENANCE"
    assert set(_Metadata.headers_seen) == {"Google"}  # the metadata server requires it


def test_no_metadata_server_ends_the_thread_quietly(restore_sigterm):
    watcher = PreemptionWatcher()
    closed = MaintenanceWatcher("http://127.0.0.1:9/none", timeout_s=2).start()
    closed._thread.join(timeout=20)
    assert not closed._thread.is_alive() and closed.event is None
    assert not watcher.should_stop(1)
