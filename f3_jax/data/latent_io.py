""".npy files of latents (or representations), read and written in blocks of frames.

`LatentFile` checks a (T, D) file when it opens it (a .npy, of floats, T >= 1, all finite) and
says what is wrong with the file's name in a DataError; `write_latents` appends blocks as they
come. Neither holds more than a block in memory, and neither imports jax: the CLI checks its
input with them before it loads a model.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterable, Iterator

import numpy as np

from f3_jax.data.errors import DataError


@contextlib.contextmanager
def removed_on_error(path: str | os.PathLike) -> Iterator[None]:
    """Removes a partly written output when writing it fails: no truncated file looks done."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise


class LatentFile:
    """A .npy of (T, width) float latents, checked on opening, read in blocks of frames.

    `width=None` leaves the width to `check_width`, for callers that learn it later. Plain
    reads rather than a memory map: mapped pages would stay in the process's resident memory.
    """

    def __init__(self, path: str | os.PathLike, width: int | None = None):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"unsupported .npy format version {version}")
                read = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
                self.shape, self.fortran_order, self.dtype = read(f)
            except ValueError as e:
                raise DataError(f"{self.path}: not a .npy file ({e})") from None
            self.offset = f.tell()
        if self.dtype.hasobject or self.dtype.kind != "f":
            raise DataError(f"{self.path}: dtype {self.dtype}, expected float latents")
        if len(self.shape) != 2:
            raise DataError(f"{self.path}: latents of shape {self.shape}, expected (T, D)")
        if self.shape[0] == 0:
            raise DataError(f"{self.path}: no latent frames (shape {self.shape})")
        if os.path.getsize(self.path) < self.offset + math.prod(self.shape) * self.dtype.itemsize:
            raise DataError(f"{self.path}: truncated: shorter than its shape {self.shape} says")
        if width is not None:
            self.check_width(width)
        self._check_finite()

    def check_width(self, width: int) -> None:
        if self.shape[1] != width:
            raise DataError(
                f"{self.path}: latents of shape {self.shape}, expected (T, {width}) for this model"
            )

    def _check_finite(self) -> None:
        frame = 0
        for block in self.blocks():
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                first = frame + int(np.argmax(bad))
                raise DataError(f"{self.path}: latents hold NaN or Inf (first at frame {first})")
            frame += len(block)

    def blocks(self, rows: int = 1 << 14) -> Iterator[np.ndarray]:
        """(n, width) float32 blocks of consecutive frames."""
        frames, width = self.shape
        if self.fortran_order:  # a frame's numbers are strided: numpy reads through a map
            z = np.load(self.path, mmap_mode="r")
            for i in range(0, frames, rows):
                yield np.asarray(z[i : i + rows], np.float32)
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for i in range(0, frames, rows):
                n = min(rows, frames - i)
                data = f.read(n * width * self.dtype.itemsize)
                yield np.frombuffer(data, self.dtype).reshape(n, width).astype(np.float32)


def write_latents(
    path: str | os.PathLike, blocks: Iterable[np.ndarray], width: int
) -> tuple[int, int]:
    """Writes consecutive (n, width) blocks as one (T, width) float32 .npy; returns (T, width).

    The header goes first with T = 0 and is rewritten in place at the end: numpy pads headers
    so that the first dimension can grow to 21 digits. Removed if writing fails.
    """

    def header(frames: int) -> bytes:
        out = io.BytesIO()
        d = {"descr": "<f4", "fortran_order": False, "shape": (frames, width)}
        np.lib.format.write_array_header_1_0(out, d)
        return out.getvalue()

    frames, f = 0, open(path, "wb")
    with removed_on_error(path), f:
        first = header(0)
        f.write(first)
        for block in blocks:
            f.write(np.ascontiguousarray(block, "<f4").tobytes())
            frames += len(block)
        last = header(frames)
        if len(last) != len(first):  # cannot happen with numpy's growth padding
            raise RuntimeError(f"{path}: .npy header grew from {len(first)} to {len(last)} bytes")
        f.seek(0)
        f.write(last)
    return frames, width
