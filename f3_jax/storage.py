"""Paths that may be local or on object storage (gs://, s3://, ...), through etils.epath.

Workdirs may live on Cloud Storage: Orbax writes checkpoints there itself; everything else f3_jax
writes (exports, logs, eval files) goes through these helpers, which behave the same on a local
disk and on any scheme epath knows (fsspec: gcsfs for gs://, s3fs for s3://; or TensorFlow's
gfile when TensorFlow is installed).

What differs on object storage, and how the helpers deal with it:
  - no directories: `ensure_dir` is a no-op there; `listdir` of a missing prefix gives [];
  - no rename: an object is published whole when its upload finishes, so `write_bytes` writes
    the final name directly there (readers see the old or the new object, never half of one),
    and a temporary name plus os.replace on local disks;
  - no append: the summary writer stages appended files locally and mirrors them
    (`DirectoryMirror`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

from etils import epath

from f3_jax.errors import UserError

# Written by process 0, read back by every process: see check_workdir_shared.
SHARED_CHECK_NAME = ".f3_jax_shared_check"
_CHUNK = 8 << 20


class WorkdirError(UserError, RuntimeError):
    """A workdir that cannot be written, or that not every process can reach."""


def is_remote(path) -> bool:
    """True for a URL with a scheme other than file:// (gs://bucket/x, s3://...)."""
    path = os.fspath(path)
    return "://" in path and not path.startswith("file://")


def as_path(path, *parts: str) -> epath.Path:
    """epath.Path(path, *parts): a local path or a URL, with the same API."""
    return epath.Path(path, *parts)


def ensure_dir(path) -> None:
    """Creates a local directory (and parents); nothing on object storage, which has none.

    (gcsfs's makedirs would even create a missing *bucket*.)
    """
    if not is_remote(path):
        os.makedirs(os.fspath(path), exist_ok=True)


def listdir(path) -> list[str]:
    """Names in a directory, sorted; [] when it does not exist (an empty prefix on GCS)."""
    p = as_path(path)
    try:
        return sorted(child.name for child in p.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_bytes(path, data: bytes, *, mode: int | None = None) -> None:
    """Writes a whole file so that a reader never sees half of it.

    Local: a temporary file in the same directory, then os.replace (`mode`, when given, is
    set before the rename). Object storage: the final name directly, since an object only
    appears when its upload completes (and a rename there is a copy plus a delete).
    """
    if is_remote(path):
        as_path(path).write_bytes(data)
        return
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path, text: str, *, mode: int | None = None) -> None:
    """`write_bytes` of UTF-8 text."""
    write_bytes(path, text.encode("utf-8"), mode=mode)


def read_text(path, default: str | None = None) -> str | None:
    """The file's text, or `default` when it does not exist."""
    try:
        return as_path(path).read_text()
    except FileNotFoundError:
        return default


def file_digest(path) -> str:
    """SHA-256 of a file, streamed (local or remote)."""
    h = hashlib.sha256()
    with as_path(path).open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def copy_file(src, dst) -> None:
    """Copies one file between any two locations (local or remote), streamed."""
    with as_path(src).open("rb") as fin, as_path(dst).open("wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


def walk_files(root) -> Iterator[str]:
    """Relative paths ('a/b.json') of the files under `root`, sorted per directory.

    Lists with iterdir/is_dir rather than epath's walk, whose fsspec backend returns paths
    without their gs:// scheme.
    """
    root = as_path(root)

    def visit(directory: epath.Path, prefix: str) -> Iterator[str]:
        for child in sorted(directory.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                yield from visit(child, f"{prefix}{child.name}/")
            else:
                yield f"{prefix}{child.name}"

    yield from visit(root, "")


def copy_tree(src, dst, *, last: Sequence[str] = ("config.json",)) -> None:
    """Replaces the directory `dst` by a copy of `src` (either may be local or remote).

    Local `dst`: copied to `dst.tmp`, then swapped in with os.replace, so the old tree stays
    whole until the new one is complete. Remote `dst` (no directory rename): the old tree is
    deleted, then the files are copied with those named in `last` after all others, so that a
    reader that checks for them (an export's config.json) never finds a partial copy.
    """
    files = list(walk_files(src))
    if not files:
        raise FileNotFoundError(f"nothing to copy under {src}")
    files.sort(key=lambda rel: os.path.basename(rel) in last)  # stable: `last` files at the end
    if is_remote(dst):
        target = as_path(dst)
        if target.exists():
            target.rmtree()
        for rel in files:
            copy_file(as_path(src, rel), as_path(dst, rel))
        return
    dst = os.fspath(dst)
    tmp = dst + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files:
        os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
        copy_file(as_path(src, rel), os.path.join(tmp, rel))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def check_workdir_writable(workdir) -> None:
    """Writes a small marker file in `workdir`, reads it back and deletes it.

    Raises WorkdirError naming the workdir when any of that fails: a missing bucket, no
    credentials, a read-only mount, a path under a regular file.
    """
    marker = as_path(workdir, f".f3_jax_write_check.{socket.gethostname()}.{os.getpid()}")
    token = uuid.uuid4().hex
    try:
        ensure_dir(workdir)
        write_text(marker, token)
        back = marker.read_text()
        marker.unlink(missing_ok=True)
    except Exception as e:  # every backend raises its own kinds
        raise WorkdirError(
            f"workdir {os.fspath(workdir)} is not writable: {type(e).__name__}: {e}"
        ) from e
    if back != token:
        raise WorkdirError(f"workdir {os.fspath(workdir)}: a file written there read back changed")


def write_shared_token(workdir, token: str) -> None:
    """Process 0's side of check_workdir_shared: WORKDIR/.f3_jax_shared_check holds `token`."""
    check_workdir_writable(workdir)
    write_text(as_path(workdir, SHARED_CHECK_NAME), token)


def shared_token_problem(workdir, token: str, *, timeout_s: float = 10.0) -> str | None:
    """None when WORKDIR/.f3_jax_shared_check holds `token`, else what was found instead.

    Polls until `timeout_s`: a shared filesystem's attribute cache may show a new file late.
    """
    path = as_path(workdir, SHARED_CHECK_NAME)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = read_text(path)
        except Exception as e:  # unreachable storage, no credentials
            return f"cannot read {path}: {type(e).__name__}: {e}"
        if found == token:
            return None
        if time.monotonic() >= deadline:
            if found is None:
                return f"{path} does not exist"
            return f"{path} holds another run's token"
        time.sleep(0.1)


def check_workdir_shared(
    workdir,
    *,
    process_index: int,
    token: str,
    barrier: Callable[[], None],
    gather: Callable[[bool], Sequence[bool]],
    timeout_s: float = 10.0,
) -> None:
    """Every process must see the file process 0 writes in `workdir`, or all raise.

    Call on every process with the same `token` (fresh per launch, e.g. broadcast from
    process 0). Process 0 writes it; after `barrier()` every process reads it back;
    `gather(ok)` returns the flags of all processes (an all-gather), so all processes raise
    the same WorkdirError together instead of some hanging in the next collective. A
    per-host local path fails here: the other hosts find no file, or an old one.
    """
    problem = None
    if process_index == 0:
        try:
            write_shared_token(workdir, token)
        except WorkdirError as e:
            problem = str(e)
    barrier()
    if problem is None:
        problem = shared_token_problem(workdir, token, timeout_s=timeout_s)
    flags = [bool(f) for f in gather(problem is None)]
    failed = [i for i, ok in enumerate(flags) if not ok]
    if failed:
        mine = f"; this process (index {process_index}): {problem}" if problem else ""
        raise WorkdirError(
            f"workdir {os.fspath(workdir)} is not reachable by every process: processes "
            f"{failed} of {len(flags)} do not see the file process 0 wrote there"
            f" ({SHARED_CHECK_NAME}){mine}. Use storage that all hosts share (gs://BUCKET/..., "
            "a shared filesystem), not a path on each host's local disk."
        )


class DirectoryMirror:
    """Copies the files of a local directory to a remote one, each when it has changed.

    `sync()` uploads every file whose size or modification time differs from its last
    upload, whole (object stores cannot append); `forget(name)` drops a file that will not
    change again from the bookkeeping.
    """

    def __init__(self, local_dir: str, remote_dir):
        self.local_dir = local_dir
        self.remote_dir = remote_dir
        self._uploaded: dict[str, tuple[int, int]] = {}

    def sync(self) -> list[str]:
        """Uploads the changed files; returns their relative paths."""
        done = []
        for root, _, names in os.walk(self.local_dir):
            for name in sorted(names):
                local = os.path.join(root, name)
                rel = os.path.relpath(local, self.local_dir)
                st = os.stat(local)
                key = (st.st_size, st.st_mtime_ns)
                if self._uploaded.get(rel) == key:
                    continue
                copy_file(local, as_path(self.remote_dir, rel))
                self._uploaded[rel] = key
                done.append(rel)
        return done

    def forget(self, rel: str) -> None:
        self._uploaded.pop(rel, None)
