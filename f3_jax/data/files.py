"""Paths of the data side, local or on object storage (gs://, any scheme etils.epath knows).

Local paths take the plain `os` route (fast, and exactly what the code did before object
storage); URLs go through `f3_jax.storage` / etils.epath, whose gs:// backend is fsspec
(gcsfs). The differences that matter here: object storage has no directories and no rename,
and an object appears only when its upload is complete, so `publish` (a finished local file
to its final place) is a rename on a local disk and one upload on object storage: either way
a reader sees the whole file or none of it.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shutil
import uuid
from typing import IO

from f3_jax import storage
from f3_jax.data.errors import DataError

is_remote = storage.is_remote
GLOB_CHARS = "*?["


def _split_url(url: str) -> tuple[str, str]:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://", rest


def join(base: str, *parts: str) -> str:
    """os.path.join for local paths; '/'-joined for URLs."""
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def canonical(path: str) -> str:
    """One spelling per file: the real absolute path, or the URL with '..' and '//' resolved."""
    if not is_remote(path):
        return os.path.realpath(path)
    scheme, rest = _split_url(path)
    return scheme + posixpath.normpath(rest)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    try:
        return storage.as_path(path).is_file()
    except OSError:
        return False


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    try:
        return storage.as_path(path).is_dir()
    except OSError:
        return False


def exists(path: str) -> bool:
    return isfile(path) or isdir(path)


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    return storage.as_path(path).read_bytes()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def open_read(path: str) -> IO[bytes]:
    """A seekable binary reader (an fsspec file for URLs: it fetches ranges on demand)."""
    return open(path, "rb") if not is_remote(path) else storage.as_path(path).open("rb")


def listdir(path: str) -> list[str]:
    """Names in a directory, sorted; [] when there is none."""
    if not is_remote(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    return storage.listdir(path)


def walk(root: str) -> list[str]:
    """Every file under `root` (recursively), as full paths, sorted."""
    if not is_remote(root):
        return sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names)
    return sorted(join(root, rel) for rel in storage.walk_files(root))


def glob(pattern: str) -> list[str]:
    """Files matching a glob, sorted. Local globs take '**' (recursive); URLs do not (listing
    a bucket recursively by pattern is what a directory --input is for)."""
    if not is_remote(pattern):
        import glob as globlib

        found = globlib.glob(os.path.expanduser(pattern), recursive=True)
        return sorted(os.path.abspath(p) for p in found if os.path.isfile(p))
    if "**" in pattern:
        raise DataError(f"{pattern!r}: '**' is not supported on object storage; give the folder")
    scheme, rest = _split_url(pattern)
    parts = rest.split("/")
    fixed = next(i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS))
    base = scheme + "/".join(parts[:fixed])
    names = walk(base) if isdir(base) else []
    depth = pattern.count("/")  # fnmatch's '*' would cross folders
    return [p for p in names if p.count("/") == depth and fnmatch.fnmatchcase(p, pattern)]


def has_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def makedirs(path: str) -> None:
    """Creates a local directory (and parents); nothing on object storage, which has none."""
    storage.ensure_dir(path)


def remove(path: str) -> None:
    if not is_remote(path):
        os.remove(path)
    else:
        storage.as_path(path).unlink(missing_ok=True)


def publish(local_file: str, dest: str) -> None:
    """Moves a complete local file to `dest` so that readers see all of it or nothing: a
    rename (through a temporary name on dest's filesystem) locally, one upload remotely."""
    if is_remote(dest):
        storage.copy_file(local_file, dest)
        os.remove(local_file)
        return
    tmp = f"{dest}.tmp.{uuid.uuid4().hex[:8]}"
    try:
        shutil.move(local_file, tmp)  # a copy when the two are on different filesystems
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole file atomically (see storage.write_bytes)."""
    storage.write_bytes(path, data)
