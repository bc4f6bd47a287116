"""Batching of training crops that drops and counts skipped records, with checkpointable state.

It runs in the main process after the optional multiprocess prefetch, so its count covers the
records of every worker: each batch carries `num_skipped`, a numpy int64 scalar, the number of
records this iterator has dropped so far (undecodable, or shorter than data.min_crop_fraction of
a crop). The count is part of the iterator state, so it survives a checkpoint restore.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from f3_jax.data.crops import SKIPPED
from f3_jax.data.errors import DataError


def stack(rows: list[dict]) -> dict[str, np.ndarray]:
    return {
        "audio": np.stack([r["audio"] for r in rows]),
        "mask": np.stack([r["mask"] for r in rows]),
        "text": np.array([r["text"] for r in rows], dtype=object),
        "id": np.array([r["id"] for r in rows], dtype=object),
    }


class _SkipCountingBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, give_up_after: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self._give_up_after = give_up_after
        self._num_skipped = 0

    def __next__(self) -> dict[str, Any]:
        rows, run = [], 0
        while len(rows) < self._batch_size:
            el = next(self._parent)  # StopIteration of a finite dataset drops the remainder
            if SKIPPED in el:
                self._num_skipped += 1
                run += 1
                if run >= self._give_up_after:
                    raise DataError(
                        f"{run} records in a row could not be decoded or were too "
                        "short: check the data and data.min_crop_fraction"
                    )
                continue
            run = 0
            rows.append(el)
        batch = stack(rows)
        batch["num_skipped"] = np.int64(self._num_skipped)
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "num_skipped": self._num_skipped}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._num_skipped = int(state["num_skipped"])


class SkipCountingBatch(grain.IterDataset):
    """Batches of `batch_size` good crops; see the module docstring."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, give_up_after: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self._give_up_after = give_up_after

    def __iter__(self) -> _SkipCountingBatchIterator:
        return _SkipCountingBatchIterator(
            self._parent.__iter__(), self._batch_size, self._give_up_after
        )

    def __str__(self) -> str:
        return f"SkipCountingBatch(batch_size={self._batch_size})"
