"""WebDataset tar shards: finding them, and reading their samples from any byte offset.

A WebDataset shard is a plain tar file; a *sample* is a run of consecutive members that share
a key, the member name up to the first dot of its file name (`a/b.c.flac`: key `a/b`,
extension `c.flac`). Samples are read with a small tar reader of our own rather than
`tarfile`, because training needs what tarfile hides: the byte offset where each sample
starts (a checkpoint resumes a shard there), seeking over members that are not wanted
(another process's share of a shard), and a clear error for a corrupt header, which tarfile
takes for the end of the archive. Headers of ustar, pax ('x') and GNU long names ('L') are
understood, which covers what Python's tarfile, GNU tar and the `webdataset` package write.

Shard lists (`data.path` of `data.source="webdataset"`): a comma-separated list of items, each
brace-expanded (`shard-{000000..000127}.tar`, `{a,b}`) then, if it holds `*?[`, globbed; a
folder stands for the `.tar` files in it. `{split}` is replaced by the split's name first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterator
from typing import IO

from f3_jax.data import files
from f3_jax.data.errors import DataError

BLOCK = 512
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class TarError(DataError):
    """A shard that is not a readable tar from some offset on (corrupt or truncated)."""


# ---- shard lists --------------------------------------------------------------------------


def _matching_brace(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise DataError(f"unbalanced '{{' in shard pattern {text!r}")


def _top_level_commas(body: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for i, c in enumerate(body):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == "," and depth == 0:
            parts.append(body[last:i])
            last = i + 1
    return parts + [body[last:]]


def brace_expand(pattern: str) -> list[str]:
    """Shell-style brace expansion: `{a,b}` alternatives and `{000..012}` numeric ranges
    (zero-padded to the width of the bounds), nested and repeated, left to right."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    end = _matching_brace(pattern, start)
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    rng = _RANGE.match(body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        choices = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        choices = [c for part in _top_level_commas(body) for c in brace_expand(part)]
    else:
        choices = ["{" + body + "}"]  # a literal brace pair, as in the shell
    return [head + c + rest for c in choices for rest in brace_expand(tail)]


def shard_paths(path: str, split: str, train_split: str) -> list[str]:
    """The .tar shards of `split` named by `path` (see the module docstring), in order."""
    if not path:
        raise DataError("data.source='webdataset' needs data.path: the .tar shards")
    if "{split}" not in path and split != train_split and not files.isdir(path):
        raise DataError(
            f"data.path={path!r} names the shards of one split; split {split!r} needs "
            "'{split}' in data.path (replaced by the split's name) or a folder holding "
            f"<split>/*.tar"
        )
    pattern = path.replace("{split}", split)
    if files.isdir(pattern):
        folder = files.join(pattern, split)
        if not files.isdir(folder):
            if split != train_split and "{split}" not in path:  # not the train shards again
                raise DataError(f"data.path={path!r} has no folder {split}/ of .tar shards")
            folder = pattern
        return [p for p in files.walk(folder) if p.endswith(".tar") and files.dirname(p) == folder]
    out: list[str] = []
    for item in _top_level_commas(pattern):
        for name in brace_expand(item.strip()):
            out.extend(files.glob(name) if files.has_glob(name) else [name])
    return out


def shards_digest(paths: list[str]) -> str:
    """Identifies a shard list in checkpoints: a resumed run must read the same shards."""
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()[:16]


# ---- members ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    offset: int  # first header block of the member (extended headers included)
    data_offset: int
    size: int

    @property
    def end(self) -> int:
        """Where the next member's header starts."""
        return self.data_offset + -(-self.size // BLOCK) * BLOCK


def _octal(field: bytes, what: str, offset: int) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarError(f"bad tar {what} {text!r} in the header at byte {offset}") from None


def _cstr(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a pax extended header ("<len> path=<value>\\n" records)."""
    pos, path = 0, None
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def _header(block: bytes, offset: int) -> tuple[str, int, bytes]:
    """(name, size, type flag) of one header block; TarError when its checksum is wrong."""
    stored = _octal(block[148:156], "checksum", offset)
    actual = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored != actual:
        raise TarError(f"corrupt tar header at byte {offset} (checksum)")
    name = _cstr(block[0:100])
    if block[257:262] == b"ustar" and block[345:500].strip(b"\0"):
        name = _cstr(block[345:500]) + "/" + name
    return name, _octal(block[124:136], "size", offset), block[156:157]


def iter_members(f: IO[bytes], start: int = 0, end: int | None = None) -> Iterator[Member]:
    """The regular-file members of a tar from the header at byte `start` on (up to byte
    `end`, a member boundary, when given). Data is not read: the caller seeks to
    `data_offset` for the members it wants. A tar that ends without its end-of-archive block
    was cut short: TarError after the members before the cut."""
    offset, pending_name, first = start, None, start
    while end is None or offset < end:
        f.seek(offset)
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise TarError(f"truncated tar: it ends at byte {offset + len(block)}")
        if block == bytes(BLOCK):
            return
        name, size, kind = _header(block, offset)
        data_offset = offset + BLOCK
        if kind in (b"x", b"L"):
            f.seek(data_offset)
            payload = f.read(size)
            long_name = _pax_path(payload) if kind == b"x" else _cstr(payload)
            pending_name = long_name or pending_name
        elif kind in (b"0", b"\0", b"7"):
            yield Member(pending_name or name, first, data_offset, size)
            pending_name = None
        else:  # directories, links, global headers: nothing to read
            pending_name = None
        offset = data_offset + -(-size // BLOCK) * BLOCK
        if kind not in (b"x", b"L"):
            first = offset


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, WebDataset's way; None without an extension."""
    folder, _, fname = name.rpartition("/")
    stem, dot, ext = fname.partition(".")
    if not dot or not stem:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


# ---- samples ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SampleRef:
    """Where one sample lies: its shard (index into the shard list) and byte range."""

    shard: int
    start: int
    end: int
    index: int  # the sample's position in its shard


def iter_samples(
    f: IO[bytes],
    shard: int,
    *,
    start: int = 0,
    end: int | None = None,
    first_index: int = 0,
    want: Callable[[int], bool] = lambda i: True,
) -> Iterator[tuple[SampleRef, dict[str, bytes] | None]]:
    """(ref, sample) for each sample from byte `start` on (the sample numbered
    `first_index`); sample is {"__key__": key, ext: bytes, ...}, or None where
    `want(index)` is false (its members are seeked over, not read)."""
    key, members, index = None, [], first_index
    for m in iter_members(f, start, end):
        parts = split_name(m.name)
        if parts is None:
            continue
        if key is not None and parts[0] != key:
            yield _sample(f, shard, key, members, index, want(index))
            index += 1
            members = []
        key = parts[0]
        members.append((parts[1], m))
    if members:
        yield _sample(f, shard, key, members, index, want(index))


def _sample(f, shard: int, key: str, members: list, index: int, wanted: bool):
    ref = SampleRef(shard, members[0][1].offset, members[-1][1].end, index)
    if not wanted:
        return ref, None
    sample = {"__key__": key}
    for ext, m in members:
        f.seek(m.data_offset)
        sample[ext] = f.read(m.size)
        if len(sample[ext]) != m.size:
            raise TarError(f"tar member {m.name} is truncated ({len(sample[ext])} of {m.size} B)")
    return ref, sample


def read_sample(f: IO[bytes], ref: SampleRef) -> dict[str, bytes]:
    """The sample at `ref` (one read of its byte range)."""
    f.seek(ref.start)
    data = _BytesAt(f.read(ref.end - ref.start), ref.start)
    found = list(iter_samples(data, ref.shard, start=ref.start, end=ref.end, first_index=ref.index))
    if len(found) != 1:
        raise TarError(f"bytes {ref.start}-{ref.end} of shard {ref.shard} are not one sample")
    return found[0][1]


class _BytesAt:
    """A byte range of a file, addressed with the file's offsets."""

    def __init__(self, data: bytes, base: int):
        self._data, self._base, self._pos = data, base, base

    def seek(self, pos: int) -> None:
        self._pos = pos

    def read(self, n: int) -> bytes:
        lo = self._pos - self._base
        self._pos += n
        return self._data[lo : lo + n]
