"""WorkdirLock: one live holder; dead or stale holders are taken over, live ones named."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from f3_jax.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError


def _write(path, **record):
    (path / LOCK_NAME).write_text(json.dumps(record))


def test_second_lock_is_refused_then_free_after_release(tmp_path):
    first = WorkdirLock(str(tmp_path))
    assert first.acquire() is None
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
        WorkdirLock(str(tmp_path)).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with WorkdirLock(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).exists()


def test_dead_local_holder_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write(tmp_path, host=socket.gethostname(), pid=dead.pid, started=0, refreshed=time.time())
    lock = WorkdirLock(str(tmp_path))
    assert "is not running" in lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_other_host_holder_counts_as_dead_only_when_stale(tmp_path):
    _write(tmp_path, host="elsewhere", pid=1, started=0, refreshed=time.time())
    with pytest.raises(WorkdirLockedError, match="host 'elsewhere'"):
        WorkdirLock(str(tmp_path)).acquire()
    _write(tmp_path, host="elsewhere", pid=1, started=0, refreshed=time.time() - 3600)
    lock = WorkdirLock(str(tmp_path), stale_s=600)
    assert "not refreshed" in lock.acquire()
    lock.release()


def test_unreadable_lock_file_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{")
    lock = WorkdirLock(str(tmp_path))
    assert "unreadable" in lock.acquire()
    lock.release()


def test_holder_refreshes_the_lock(tmp_path):
    lock = WorkdirLock(str(tmp_path), refresh_s=0.05)
    lock.acquire()
    first = json.loads((tmp_path / LOCK_NAME).read_text())["refreshed"]
    time.sleep(0.3)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["refreshed"] > first
    lock.release()
