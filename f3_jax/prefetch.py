"""Train batches put on the devices ahead of the step that consumes them.

The train loop dispatches step N, then calls `read_ahead()`: the host reads, tokenizes and
transfers the next batches while the devices run step N, so that after a host synchronization
(a log step, a validation) the next step starts without waiting for its input. The data state
saved with a checkpoint is the one after the last batch *consumed*, not the last one read
ahead, so a resumed run starts with the first batch no step has seen.
"""

from __future__ import annotations

import collections
import copy
import json
from collections.abc import Callable
from typing import Any


class DevicePrefetch:
    """Iterates (host batch, device batch) pairs; `size` more wait on the devices.

    `data_iter` is the Grain iterator of the train loop (get_state/close); `to_device` turns a
    host batch into the step's device arrays. size 0 reads each batch when it is asked for.
    Checkpoints save `saved_state()`: the state as of the last consumed batch, fixed when the
    save is called (an asynchronous save may read it after the loop has moved on).
    """

    def __init__(self, data_iter, to_device: Callable[[dict], dict], size: int = 2):
        if size < 0:
            raise ValueError(f"prefetch size {size} must be >= 0")
        self._iter = data_iter
        self._to_device = to_device
        self._size = size
        self._ahead: collections.deque = collections.deque()
        self._state = data_iter.get_state()

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> tuple[dict, dict]:
        if not self._ahead:
            self._read_one()
        local, batch, self._state = self._ahead.popleft()
        return local, batch

    def read_ahead(self) -> None:
        """Fills the queue to `size` batches on the devices (call after dispatching a step)."""
        while len(self._ahead) < self._size:
            self._read_one()

    def _read_one(self) -> None:
        local = next(self._iter)
        state = copy.deepcopy(self._iter.get_state())  # ours, whatever the iterator reuses
        self._ahead.append((local, self._to_device(local), state))

    def state(self) -> dict[str, Any]:
        """The data iterator's state after the last batch returned by __next__."""
        return self._state

    def saved_state(self) -> SavedState:
        """What a checkpoint taken now stores: `state()`, fixed."""
        return SavedState(self._state)

    def close(self) -> None:
        self._ahead.clear()
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()


class SavedState:
    """A data-iterator state fixed at a step, as grain.checkpoint.CheckpointHandler saves it.

    That handler writes `json.dumps(get_state())` for Grain's own iterators and
    `get_state().decode()` for any other object: this gives the same file.
    """

    def __init__(self, state: dict[str, Any]):
        self._json = json.dumps(state, indent=4).encode()

    def get_state(self) -> bytes:
        return self._json
