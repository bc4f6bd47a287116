"""One global example order for any number of processes, and resuming it elastically.

The training stream is one global sequence of crops (shuffled, repeated, cropped by global
index). Global batch b is the elements [b*B, (b+1)*B) of it, for the global batch size B, and
process p of P reads the slice [b*B + p*B/P, b*B + (p+1)*B/P) of every global batch. So the
global batch a step sees does not depend on how many processes read it, and
`jax.make_array_from_process_local_data` puts the slices back in order (process p's rows
after process p-1's).

A checkpoint keeps every process's iterator state, which includes where its slices started
(`start`, a global element index), the global batch size and how many elements the process
pulled from its slice (`consumed`). Restarted with the same process count, each process
restores its own state exactly. Restarted with another count, `resume_start` finds the end of
the last global batch any old process had started, and every new process begins its slices
there: without bad records (a process that drops one reads ahead into the next global batch)
that is exactly the next step's batch, so nothing is seen twice or skipped.

Streaming sources (WebDataset tar shards) have no global element index: their states hold
each row's own stream ("lanes", data/webdataset_source.py), and a job of another process count
gets its rows' lanes from the old processes' states instead of a start.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grain

from f3_jax.data.errors import DataError
from f3_jax.data.lanes import LANES_KIND, reassign_lanes


class ProcessSlice(grain.MapDataset):
    """Process `process_index`'s rows of every global batch, from global element `start`."""

    def __init__(
        self,
        parent: grain.MapDataset,
        *,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        start: int = 0,
    ):
        super().__init__(parent)
        if global_batch_size % process_count:
            raise DataError(
                f"global batch size {global_batch_size} is not divisible by the "
                f"{process_count} processes"
            )
        self._global = global_batch_size
        self._local = global_batch_size // process_count
        self._offset = process_index * self._local
        self._start = start
        self._length = max(0, len(parent) - start) // global_batch_size * self._local

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[
            global_index(index, self._start, self._global, self._local, self._offset)
        ]

    def __str__(self) -> str:
        return (
            f"ProcessSlice(global_batch={self._global}, rows={self._offset}:"
            f"{self._offset + self._local}, start={self._start})"
        )


def global_index(index: int, start: int, global_batch: int, local_batch: int, offset: int) -> int:
    """The global element a process's `index`-th element is."""
    batch, row = divmod(index, local_batch)
    return start + batch * global_batch + offset + row


def resume_start(states: Sequence[dict[str, Any]]) -> int:
    """The global element a restarted job of any process count starts at (see module doc)."""
    ends = []
    for p, s in enumerate(states):
        start, consumed = int(s["start"]), int(s["consumed"])
        if consumed == 0:
            ends.append(start)
            continue
        global_batch = int(s["global_batch_size"])
        local = global_batch // len(states)
        last = global_index(consumed - 1, start, global_batch, local, p * local)
        ends.append(start + ((last - start) // global_batch + 1) * global_batch)
    return max(ends)


def read_process_states(directory, process_count: int) -> list[dict[str, Any]]:
    """The iterator states a `process_count`-process job saved into a checkpoint's `data` item."""
    states = []
    for p in range(process_count):
        path = directory / f"process_{p}-of-{process_count}.json"
        if not path.exists():
            raise DataError(f"{path} is missing: the checkpoint's data state is incomplete")
        states.append(json.loads(path.read_text()))
    return states


def saved_process_count(directory) -> int:
    """The process count of the job that wrote a checkpoint's `data` item."""
    names = [p.name for p in directory.glob("process_*-of-*.json")]
    counts = {int(n[: -len(".json")].rsplit("-of-", 1)[1]) for n in names}
    if len(counts) != 1:
        raise DataError(f"{directory} holds data states of process counts {sorted(counts)}")
    return counts.pop()


def restore_position(
    directory, process_index: int, process_count: int, global_batch_size: int
) -> tuple[int, dict[str, Any] | None, int]:
    """(start, iterator state or None, skipped count) for this process of a resumed job.

    `directory` is a checkpoint's `data` item. Same process count and global batch size: this
    process's own state (restore it with set_state on a dataset built from that start).
    Otherwise no state,
    the end of the last global batch any old process had started, and (on process 0) the old
    processes' skipped-record count, so the total carries on.
    """
    saved = saved_process_count(directory)
    states = read_process_states(directory, saved)
    same_batch = int(states[0].get("global_batch_size", global_batch_size)) == global_batch_size
    if saved == process_count and same_batch:
        state = states[process_index]
        return int(state.get("start", 0)), state, int(state.get("num_skipped", 0))
    skipped = sum(int(s.get("num_skipped", 0)) for s in states) if process_index == 0 else 0
    if _lane_states(states):
        state = reassign_lanes(states, process_index, process_count, global_batch_size)
        return 0, state | {"num_skipped": skipped}, skipped
    if any("consumed" not in s for s in states):
        raise DataError(
            f"{directory} was written by {saved} processes before elastic data states "
            f"existed: resume it with {saved} processes and the same batch size"
        )
    return resume_start(states), None, skipped


def _lane_states(states: Sequence[dict[str, Any]]) -> bool:
    return all(
        isinstance(s.get("parent"), dict) and s["parent"].get("kind") == LANES_KIND for s in states
    )
