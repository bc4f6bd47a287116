"""Batching of training crops that drops and counts skipped records, with checkpointable state.

It runs in the main process after the optional multiprocess prefetch, so its count covers the
records of every worker: each batch carries `num_skipped`, a numpy int64 scalar, the number of
records this iterator has dropped so far (undecodable, or shorter than data.min_crop_fraction of
a crop). The count is part of the iterator state, so it survives a checkpoint restore.

The state also says where this process's stream is in the global example order
(data/global_order.py): `start`, `global_batch_size` and `consumed`, the elements pulled from
the parent so far, skipped ones included; with them a job of another process count resumes.
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
    def __init__(
        self, parent: grain.DatasetIterator, batch_size: int, give_up_after: int, position: dict
    ):
        super().__init__(parent)
        self._batch_size = batch_size
        self._give_up_after = give_up_after
        self._position = position  # start, global_batch_size: fixed for this stream
        self._num_skipped = int(position.get("num_skipped", 0))
        self._consumed = 0

    def __next__(self) -> dict[str, Any]:
        rows, run = [], 0
        while len(rows) < self._batch_size:
            el = next(self._parent)  # StopIteration of a finite dataset drops the remainder
            self._consumed += 1
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
        return {
            "parent": self._parent.get_state(),
            "num_skipped": self._num_skipped,
            "consumed": self._consumed,
            "start": int(self._position["start"]),
            "global_batch_size": int(self._position["global_batch_size"]),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if int(state.get("start", 0)) != int(self._position["start"]):
            raise DataError(
                f"data iterator state starts at global element {state.get('start', 0)}, this "
                f"dataset at {self._position['start']}: build it with that start"
            )
        self._parent.set_state(state["parent"])
        self._num_skipped = int(state["num_skipped"])
        self._consumed = int(state.get("consumed", 0))


class SkipCountingBatch(grain.IterDataset):
    """Batches of `batch_size` good crops; see the module docstring."""

    def __init__(
        self,
        parent: grain.IterDataset,
        batch_size: int,
        give_up_after: int,
        position: dict | None = None,
    ):
        super().__init__(parent)
        self._batch_size = batch_size
        self._give_up_after = give_up_after
        self._position = position or {"start": 0, "global_batch_size": batch_size}

    def __iter__(self) -> _SkipCountingBatchIterator:
        return _SkipCountingBatchIterator(
            self._parent.__iter__(), self._batch_size, self._give_up_after, self._position
        )

    def __str__(self) -> str:
        return f"SkipCountingBatch(batch_size={self._batch_size})"
