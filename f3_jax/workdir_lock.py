"""One workdir, one trainer: a lock file that a second training on the same workdir stops at.

Two trainings writing one workdir overwrite each other's checkpoints and logs. The lock is
`WORKDIR/train.lock`, a small JSON record of the holder (host, pid, start time) that the holder
refreshes every `REFRESH_S` seconds. A run that finds the lock:

  - held by a live process: stops at once, naming the holder;
  - left by a dead process on this host (SIGKILL, OOM): takes it over, with a warning;
  - left on another host and not refreshed for `STALE_S` seconds (a preempted pod whose
    replacement comes up elsewhere): takes it over, with a warning.

Locally the lock is created with O_CREAT | O_EXCL, so two runs starting together cannot both
win. Object storage has no exclusive create: there the check is best effort (read, then write,
then read back), which still stops the common mistake of a second launch on a running workdir.
In multi-process jobs only process 0 takes the lock; train.py makes every process stop together.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from f3_jax import storage
from f3_jax.errors import UserError

LOCK_NAME = "train.lock"
REFRESH_S = 30.0
STALE_S = 300.0  # another host's lock this old is taken to be dead


class WorkdirLockedError(UserError, RuntimeError):
    """The workdir is held by another live training."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {started}"


class WorkdirLock:
    """Holds WORKDIR/train.lock from `acquire` to `release` (a context manager as well)."""

    def __init__(self, workdir: str, *, stale_s: float = STALE_S, refresh_s: float = REFRESH_S):
        self.path = storage.as_path(workdir, LOCK_NAME)
        self.stale_s, self.refresh_s = stale_s, refresh_s
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "token": f"{os.getpid()}-{time.time_ns()}",
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- acquiring ---------------------------------------------------------------------
    def acquire(self) -> str | None:
        """Takes the lock; returns a warning when a dead holder's lock was taken over.

        Raises WorkdirLockedError naming a live holder.
        """
        storage.ensure_dir(os.path.dirname(os.fspath(self.path)))
        if self._create_exclusive():
            self._start_refresh()
            return None
        holder = self._read()
        problem = self._stale_reason(holder)
        if problem is None:
            raise WorkdirLockedError(
                f"workdir {os.path.dirname(os.fspath(self.path))} is in use by another "
                f"training ({_describe(holder)}): stop it, or use another --workdir. If that "
                f"run is dead, delete {self.path}"
            )
        self._write()
        if self._read().get("token") != self.record["token"]:  # another run took it first
            raise WorkdirLockedError(f"{self.path} was taken by another run just now")
        self._start_refresh()
        return f"took over the lock {self.path} of a dead run ({_describe(holder)}: {problem})"

    def _create_exclusive(self) -> bool:
        if storage.is_remote(self.path):
            if self.path.exists():
                return False
            self._write()
            return self._read().get("token") == self.record["token"]
        try:
            fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.record | {"refreshed": time.time()}, f)
        return True

    def _stale_reason(self, holder: dict) -> str | None:
        """Why the holder is dead, or None if it may be alive."""
        if not holder:  # unreadable or empty: a writer died mid-write
            return "unreadable lock file"
        if holder.get("host") == socket.gethostname():
            pid = int(holder.get("pid", -1))
            return None if _pid_alive(pid) else f"process {pid} is not running"
        age = time.time() - float(holder.get("refreshed", 0))
        return f"not refreshed for {age:.0f} s" if age > self.stale_s else None

    # ---- holding -----------------------------------------------------------------------
    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _write(self) -> None:
        storage.write_text(self.path, json.dumps(self.record | {"refreshed": time.time()}))

    def _start_refresh(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.refresh_s):
                try:
                    self._write()
                except OSError:  # a transient storage error: the next refresh retries
                    pass

        self._thread = threading.Thread(target=loop, name="f3_workdir_lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Removes the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._read().get("token") == self.record["token"]:
            try:
                self.path.unlink()
            except OSError:
                pass

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
