"""The data sources `data.source` can name: one entry each, so adding a source is one entry.

Every reader of `data.source` goes through this table: the config check (`names()`),
`sources.open_split` (random access to one split: validation, the latent cache),
`pipeline.ensure_dataset` and `pipeline.train_dataset` (the training elements). An entry
names its functions as "module:function" and imports them on first use, so that the config
check does not import grain, TFDS or tar readers.

A source's functions:
  open_split(data_cfg, split, sample_rate) -> sources.SplitSource
  ensure(data_cfg, sample_rate) -> None            raises DataError naming what is missing
  train_elements(data_cfg, *, sample_rate, batch_size, seed, process_index, process_count,
                 num_epochs, start) -> elements.TrainElements
      this process's crops (or skip markers) in the global order of data/global_order.py;
      pipeline.train_dataset batches them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

from f3_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class DataSource:
    name: str
    about: str  # one line: what data.path (or other fields) holds for this source
    open_split: str
    ensure: str
    train_elements: str

    def function(self, which: str) -> Callable:
        module, attr = getattr(self, which).split(":")
        return getattr(importlib.import_module(module), attr)


_PIPELINE = "f3_jax.data.pipeline"
_WDS = "f3_jax.data.webdataset_source"

SOURCES: dict[str, DataSource] = {
    s.name: s
    for s in (
        DataSource(
            "array_record",
            "data.path: a directory written by f3_jax.data.prepare or demo_corpus",
            "f3_jax.data.sources:array_record_split",
            f"{_PIPELINE}:ensure_records",
            f"{_PIPELINE}:random_access_elements",
        ),
        DataSource(
            "tfds",
            "data.tfds_name in data.tfds_data_dir, through tfds.data_source",
            "f3_jax.data.sources:tfds_split",
            f"{_PIPELINE}:ensure_tfds",
            f"{_PIPELINE}:random_access_elements",
        ),
        DataSource(
            "webdataset",
            "data.path: .tar shards (brace pattern, glob, comma list or folder; {split})",
            "f3_jax.data.webdataset_samples:open_split",
            "f3_jax.data.webdataset_samples:ensure",
            f"{_WDS}:train_elements",
        ),
    )
}


def names() -> tuple[str, ...]:
    return tuple(SOURCES)


def get(name: str) -> DataSource:
    """The entry of `name`; DataError listing the known names otherwise."""
    if name not in SOURCES:
        raise DataError(f"data.source={name!r}: use one of {', '.join(SOURCES)}")
    return SOURCES[name]
