"""The lanes of a streaming source (WebDataset): each row of a global batch reads its own
stream, and the iterator state of a process holds its lanes. Here: a lane's initial state, and
how a job resumed with another process count or batch size takes over the old lanes."""

from __future__ import annotations

from typing import Any

LANES_KIND = "webdataset_lanes"  # the `kind` of a streaming source's iterator state


def fresh_lane(epoch: int = 0) -> dict[str, Any]:
    """The state of a lane at the start of `epoch`."""
    return {"epoch": epoch, "unit": 0, "offset": 0, "index": 0, "read": 0, "draws": 0, "buffer": []}


def reassign_lanes(
    states: list[dict[str, Any]], process_index: int, process_count: int, global_batch_size: int
) -> dict[str, Any]:
    """This process's iterator state for a job of another process count or batch size, from
    the saved states of all old processes (see the module docstring)."""
    parents = [s["parent"] for s in states]
    lanes: dict[str, dict] = {}
    for p in parents:
        lanes.update(p["lanes"])
    local = global_batch_size // process_count
    rows = range(process_index * local, (process_index + 1) * local)
    if int(parents[0]["global_batch_size"]) == global_batch_size:
        mine = {str(r): lanes[str(r)] for r in rows}
    else:  # other lanes: each starts the epoch after the furthest old lane's
        epoch = max(int(lane["epoch"]) for lane in lanes.values()) + 1
        mine = {str(r): fresh_lane(epoch) for r in rows}
    parent = dict(parents[0], global_batch_size=global_batch_size, next=0, lanes=mine)
    return {"parent": parent, "consumed": 0, "start": 0, "global_batch_size": global_batch_size}
