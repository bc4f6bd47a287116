"""Errors raised by the data side: one type the trainer can catch and show as is."""

from __future__ import annotations

from f3_jax.errors import UserError


class DataError(UserError, ValueError):
    """Data that cannot be used as configured; the message names the path or the value."""


class AudioDecodeError(DataError):
    """One audio file or record that cannot be decoded (bad header, empty, NaN/Inf).

    Prepare and the pipelines catch it per item: the item is skipped and counted.
    """
