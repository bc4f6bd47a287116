"""`data.source = "webdataset"`: training and validation straight from WebDataset tar shards.

A sample is a run of tar members sharing a key (data/tar_shards.py): its audio is the first
of the `flac`, `wav`, `mp3`, `opus`, `ogg` members; its transcript the `txt` member, else the
`text` field of a `json` member, whose other numeric fields become labels; its id the key.
FLAC and WAV crops are decoded by seeking (only the frames of the crop); other formats are
decoded whole.

Training order. Tar shards cannot be indexed without reading them, so the global order is
built from streams rather than from a permutation of all examples. Each row r of a global
batch of B rows is a *lane*: row r of global batch b is lane r's b-th sample. Every epoch e
shuffles the shards (seeded) and deals them to the lanes round robin (lane r reads shards
r, r+B, r+2B, ... of that order); when there are fewer shards than lanes, each shard is dealt
as k = ceil(B / #shards) parts (part q: its samples q, q+k, q+2k, ...; a part reads the whole
shard's headers but only its own samples' bytes). A lane shuffles what it reads with a
buffer of data.shuffle_buffer samples (so a process holds that many times its rows) and moves
on to its next epoch when its shards are done: lanes are not synchronized at epoch boundaries. A bad
sample (undecodable, too short, a corrupt or missing shard) is skipped *inside its lane*: the
batcher counts a skip marker and the row still gets the lane's next sample, so bad samples do
not shift other rows.

So the global batches depend on the seed, the shard list, B and the buffer size, and not on
the number of processes: process p reads the lanes of its rows only (its share of the bytes)
and puts them in row order. Each crop is seeded by (seed, lane, sample number in the lane).
The iterator state holds every lane's position (epoch, shard, byte offset and sample number,
and the buffered samples as byte ranges, read back on restore), so a resumed run yields
exactly the batches the uninterrupted one would have. Resumed with another process count, the
new processes take over the lanes of their rows from the old processes' states (the same
batches again, exactly); with another global batch size there are other lanes, which start a
new epoch (global_order.restore_position calls `reassign_lanes`).

What this does not give, unlike the random-access sources: epochs are per lane rather than
exact passes over the corpus at one moment, and a sample's neighbours in a batch come from the
same B shards for a while (a wider mix needs more shards or a larger buffer).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
from absl import logging

from f3_jax.data import files
from f3_jax.data.crops import SKIPPED, RandomCrop
from f3_jax.data.elements import TrainElements, seeds
from f3_jax.data.errors import DataError
from f3_jax.data.lanes import LANES_KIND, fresh_lane
from f3_jax.data.tar_shards import (
    SampleRef,
    TarError,
    iter_samples,
    read_sample,
    shards_digest,
)
from f3_jax.data.webdataset_samples import parse_sample, split_paths

GIVE_UP_AFTER = 1000  # skip markers in a row before training stops with a DataError


# ---- training: lanes ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What every lane of every process agrees on."""

    paths: tuple[str, ...]
    parts: int  # k: each shard is dealt as k parts (more lanes than shards)
    global_batch: int  # B: the number of lanes
    shuffle_seed: int
    buffer: int  # samples a lane holds to shuffle
    num_epochs: int | None
    where: str

    def units(self, lane: int, epoch: int) -> list[int]:
        """The (shard * parts + part) units lane `lane` reads in `epoch`, in order."""
        return _epoch_order(self.shuffle_seed, epoch, len(self.paths) * self.parts)[
            lane :: self.global_batch
        ]


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


_BAD = object()  # a lane's answer for a shard it could not read (counted as one skip)


class _Lane:
    """One row of every global batch: its shards in order, through a shuffle buffer."""

    def __init__(self, plan: _Plan, lane: int, state: dict[str, Any]):
        self.plan, self.lane = plan, lane
        self.epoch, self.unit = int(state["epoch"]), int(state["unit"])
        self.offset, self.index = int(state["offset"]), int(state["index"])
        self.read, self.draws = int(state["read"]), int(state["draws"])
        self.buffer = [self._reread(SampleRef(*ref)) for ref in state["buffer"]]
        self.done = plan.num_epochs is not None and self.epoch >= plan.num_epochs
        self._reader = None
        self._file = None
        self._units: tuple[int, list[int]] = (-1, [])  # (epoch, its units)

    def state(self) -> dict[str, Any]:
        refs = [[r.shard, r.start, r.end, r.index] for r, _ in self.buffer]
        return {
            "epoch": self.epoch,
            "unit": self.unit,
            "offset": self.offset,
            "index": self.index,
            "read": self.read,
            "draws": self.draws,
            "buffer": refs,
        }

    def _reread(self, ref: SampleRef) -> tuple[SampleRef, dict | None]:
        try:
            with files.open_read(self.plan.paths[ref.shard]) as f:
                return ref, read_sample(f, ref)
        except (TarError, OSError) as e:
            logging.warning("webdataset: cannot re-read a buffered sample: %s", e)
            return ref, None

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._reader = None

    def _next_unit(self) -> None:
        self._close()
        self.unit, self.offset, self.index = self.unit + 1, 0, 0

    def _open(self, unit: int) -> None:
        shard, part = divmod(unit, self.plan.parts)
        k = self.plan.parts
        self._file = files.open_read(self.plan.paths[shard])
        self._reader = iter_samples(
            self._file, shard, start=self.offset, first_index=self.index,
            want=lambda i: i % k == part,
        )  # fmt: skip

    def _from_shards(self):
        """The lane's next sample from its shards: (ref, sample), _BAD, or None at the end."""
        while not self.done:
            if self._units[0] != self.epoch:
                self._units = (self.epoch, self.plan.units(self.lane, self.epoch))
            units = self._units[1]
            if self.unit >= len(units):
                self._end_epoch()
                continue
            try:
                if self._reader is None:
                    self._open(units[self.unit])
                ref, sample = next(self._reader)
            except StopIteration:
                self._next_unit()
                continue
            except (TarError, OSError) as e:
                shard = self.plan.paths[units[self.unit] // self.plan.parts]
                logging.warning("webdataset shard %s: %s (rest of the shard skipped)", shard, e)
                self._next_unit()
                return _BAD
            self.offset, self.index = ref.end, ref.index + 1
            if sample is not None:
                self.read += 1
                return ref, sample
        return None

    def _end_epoch(self) -> None:
        if self.read == 0:
            raise DataError(
                f"{self.plan.where}: row {self.lane} of the global batch found no sample in a "
                f"whole epoch: the shards hold fewer samples than the {self.plan.global_batch} "
                "rows of a global batch, or none is readable"
            )
        self._close()
        self.epoch, self.unit, self.offset, self.index, self.read = self.epoch + 1, 0, 0, 0, 0
        self.done = self.plan.num_epochs is not None and self.epoch >= self.plan.num_epochs

    def next(self):
        """(sample or None when unreadable, sample number) drawn from the buffer, _BAD, or
        None when the lane has ended (finite num_epochs only)."""
        while len(self.buffer) < self.plan.buffer:
            got = self._from_shards()
            if got is None:
                break
            if got is _BAD:
                return _BAD
            self.buffer.append(got)
        if not self.buffer:
            return None
        rng = np.random.default_rng([self.plan.shuffle_seed, self.lane, self.draws])
        j = int(rng.integers(len(self.buffer)))
        self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
        _, sample = self.buffer.pop()
        self.draws += 1
        return sample, self.draws - 1


_END = "end"


class _LaneIterator(grain.DatasetIterator):
    """This process's rows, in order: one element per lane per round, skip markers between.

    Lanes pick their samples in this thread (tar reading); crops are decoded ahead in a
    thread pool. The state is taken as of the last element handed out, not as of what has
    been read ahead.
    """

    def __init__(self, stream: LaneStream):
        super().__init__()
        self._s = stream
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(stream.threads) if stream.threads > 0 else None
        )
        self._reset({str(r): fresh_lane() for r in stream.rows}, 0)

    def _reset(self, lanes: dict[str, dict], next_row: int) -> None:
        self._lanes = {r: _Lane(self._s.plan, r, lanes[str(r)]) for r in self._s.rows}
        self._given = {r: lanes[str(r)] for r in self._s.rows}  # states as of handed-out elements
        self._ahead = {r: collections.deque() for r in self._s.rows}
        self._next = next_row

    def _crop(self, lane: int, sample: dict | None, n: int) -> dict:
        if sample is None:
            return {SKIPPED: True}
        return self._s.crop(sample, np.random.default_rng([self._s.crop_seed, lane, n]))

    def _fill(self, r: int) -> None:
        ahead = self._ahead[r]
        while len(ahead) < self._s.depth and not (ahead and ahead[-1][0] is _END):
            got = self._lanes[r].next()
            state = self._lanes[r].state()
            if got is None:
                ahead.append((_END, state))
            elif got is _BAD:
                ahead.append(({SKIPPED: True}, state))
            elif self._pool is None:
                ahead.append((self._crop(r, *got), state))
            else:
                ahead.append((self._pool.submit(self._crop, r, *got), state))

    def __next__(self) -> dict:
        r = self._s.rows[self._next]
        self._fill(r)
        element, state = self._ahead[r][0]
        if element is _END:
            raise StopIteration
        self._ahead[r].popleft()
        if isinstance(element, concurrent.futures.Future):
            element = element.result()
        self._given[r] = state
        self._fill(r)
        if SKIPPED not in element:
            self._next = (self._next + 1) % len(self._s.rows)
        return element

    def get_state(self) -> dict[str, Any]:
        return {
            "kind": LANES_KIND,
            "shards": self._s.digest,
            "global_batch_size": self._s.plan.global_batch,
            "next": self._next,
            "lanes": {str(r): self._given[r] for r in self._s.rows},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != LANES_KIND:
            raise DataError("the checkpoint's data state is not of a webdataset source")
        if state["shards"] != self._s.digest:
            raise DataError(
                f"{self._s.plan.where}: the shard list differs from the one the checkpoint "
                "was written with; resume with the same data.path"
            )
        missing = [r for r in self._s.rows if str(r) not in state["lanes"]]
        if missing or int(state["global_batch_size"]) != self._s.plan.global_batch:
            raise DataError(f"the data state has no lanes {missing[:4]} of this process")
        self._reset(state["lanes"], int(state["next"]))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class LaneStream(grain.IterDataset):
    """The crops of this process's lanes (rows), see the module docstring."""

    def __init__(
        self,
        plan: _Plan,
        rows: range,
        crop: Callable,
        crop_seed: int,
        *,
        threads: int,
        depth: int,
    ):
        super().__init__()
        self.plan, self.rows, self.crop, self.crop_seed = plan, rows, crop, crop_seed
        self.threads, self.depth = threads, max(1, depth)
        self.digest = shards_digest(list(plan.paths))

    def __iter__(self) -> _LaneIterator:
        return _LaneIterator(self)

    def __str__(self) -> str:
        return f"LaneStream(rows={self.rows.start}:{self.rows.stop}, shards={len(self.plan.paths)})"


def train_elements(
    data_cfg,
    *,
    sample_rate: int,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    num_epochs: int | None,
    start: int,
):
    """The registry's train_elements for tar shards (this process's lanes)."""

    if start:
        raise DataError(
            "a webdataset stream resumes from its checkpointed lane states, not from a global "
            f"element index (start={start})"
        )
    paths = split_paths(data_cfg, data_cfg.train_split)
    if data_cfg.num_workers > 0:  # lanes keep their state in this process
        logging.warning(
            "data.num_workers=%d is not used by webdataset: crops decode in "
            "data.read_threads=%d threads",
            data_cfg.num_workers,
            data_cfg.read_threads,
        )
    global_batch = batch_size * process_count
    shuffle_seed, crop_seed = seeds(seed)
    where = f"webdataset {data_cfg.path} ({len(paths)} shards)"
    plan = _Plan(
        tuple(paths),
        parts=-(-global_batch // len(paths)),
        global_batch=global_batch,
        shuffle_seed=shuffle_seed,
        buffer=max(1, int(data_cfg.shuffle_buffer)),
        num_epochs=num_epochs,
        where=where,
    )
    crop_len = round(data_cfg.crop_seconds * sample_rate)
    crop = RandomCrop(
        parse_sample,
        sample_rate,
        crop_len,
        min_len=int(np.ceil(data_cfg.min_crop_fraction * crop_len)),
        gain_db=tuple(float(g) for g in data_cfg.gain_db),
        from_start=data_cfg.get("crop_mode", "random") == "utterance",
    )
    rows = range(process_index * batch_size, (process_index + 1) * batch_size)
    stream = LaneStream(
        plan,
        rows,
        crop,
        crop_seed,
        threads=data_cfg.read_threads,
        depth=data_cfg.prefetch_buffer,
    )
    return TrainElements(stream, where, GIVE_UP_AFTER)
