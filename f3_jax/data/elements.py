"""What a data source gives the train pipeline: its training crops for one process, before
batching; and the seeds a source's shuffle and crops derive from."""

from __future__ import annotations

import dataclasses

import grain
import numpy as np


def seeds(seed: int) -> tuple[int, int]:
    """Independent 32-bit seeds for the shuffle and the crops."""
    a, b = np.random.SeedSequence(seed).generate_state(2)
    return int(a), int(b)


@dataclasses.dataclass(frozen=True)
class TrainElements:
    """A source's training crops for one process, before batching (see registry.py)."""

    dataset: grain.IterDataset  # crop dicts or skip markers, in this process's global order
    where: str  # the data it reads, for messages
    give_up_after: int  # this many skip markers in a row stop training with a DataError
