"""The trainer's entry points: ensure_dataset, train_dataset and eval_batches.

Training pipeline (grain), per process:

    MapDataset.source(split)              random access over every record of the split
      [process_index::process_count]      this process's records: disjoint, together all
      .shuffle(seed).repeat(None)         a new order each epoch; the first epoch's order does
                                          not depend on how many epochs follow (none configured:
                                          the trainer stops by step count)
      .random_map(RandomCrop)             crop of data.crop_seconds (shorter: padded + mask),
                                          optional gain; a bad record becomes a skip marker
      .to_iter_dataset(read threads)
      [.mp_prefetch(data.num_workers)]    worker processes when num_workers > 0
      SkipCountingBatch(batch_size)       drops and counts skip markers, stacks a batch

The iterator of the result has get_state/set_state (for grain.checkpoint / orbax): a restored
iterator yields exactly the batches the original would have yielded next. Batches:
`audio` (B, L) float32 in [-1, 1], `mask` (B, L) float32, `text` and `id` (B,) object arrays of
str ("" when a record has no transcript), `num_skipped` int64 scalar.
"""

from __future__ import annotations

import os

import grain
import numpy as np
from absl import flags, logging

from f3_jax.data.batching import SkipCountingBatch
from f3_jax.data.crops import RandomCrop
from f3_jax.data.dataset_info import read_info
from f3_jax.data.errors import DataError
from f3_jax.data.evaluation import eval_batches
from f3_jax.data.sources import SplitSource, open_split

__all__ = ["ensure_dataset", "train_dataset", "eval_batches"]

DEMO_TFDS_NAME = "f3_demo_corpus"


def _mark_flags_parsed(worker_index: int = 0, worker_count: int = 1) -> None:
    """Grain worker processes read absl flags; outside absl.app.run they were never parsed."""
    del worker_index, worker_count
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _nonempty_dir(path: str) -> bool:
    return bool(path) and os.path.isdir(path) and bool(os.listdir(path))


def _describe_missing(path: str) -> str:
    if not os.path.isdir(path):
        return "does not exist"
    return "is empty" if not os.listdir(path) else "holds no dataset_info.json"


def _build_demo(data_cfg, sample_rate: int) -> None:
    from f3_jax.data import demo_corpus  # lazy: piper is an optional extra

    logging.warning(
        "data.path=%s has no complete dataset: building the demo corpus there "
        "(%.0f minutes of synthetic speech, a few minutes on 2 CPU cores)",
        data_cfg.path,
        data_cfg.demo_minutes,
    )
    demo_corpus.build(data_cfg.path, minutes=data_cfg.demo_minutes, sample_rate=sample_rate)


def ensure_dataset(data_cfg, sample_rate: int) -> None:
    """Checks that the configured data exists; builds the demo corpus when so configured.

    Call it once per host before the pipelines (on a shared filesystem, from one process).
    Raises DataError naming the path when the data is missing and is not to be built.
    """
    if data_cfg.source == "array_record":
        if read_info(data_cfg.path) is not None:
            return
        if data_cfg.build_demo_if_missing:
            _build_demo(data_cfg, sample_rate)
            return
        state = _describe_missing(data_cfg.path)
        raise DataError(
            f"data.path={data_cfg.path!r} {state}: write it with "
            "`python -m f3_jax.data.prepare` or `python -m f3_jax.data.demo_corpus`"
        )
    if data_cfg.source == "tfds":
        if _nonempty_dir(data_cfg.tfds_data_dir):
            return
        if data_cfg.build_demo_if_missing and data_cfg.tfds_name == DEMO_TFDS_NAME:
            if read_info(data_cfg.path) is None:
                _build_demo(data_cfg, sample_rate)
            from f3_jax.data.tfds_demo import build_tfds_demo

            logging.warning(
                "data.tfds_data_dir=%s is empty: converting the demo corpus at %s to TFDS",
                data_cfg.tfds_data_dir,
                data_cfg.path,
            )
            build_tfds_demo(data_cfg.path, data_cfg.tfds_data_dir)
            return
        raise DataError(f"data.tfds_data_dir={data_cfg.tfds_data_dir!r} is missing or empty")
    raise DataError(f"data.source={data_cfg.source!r}: use 'array_record' or 'tfds'")


def _seeds(seed: int) -> tuple[int, int]:
    """Independent 32-bit seeds for the shuffle and the crops."""
    a, b = np.random.SeedSequence(seed).generate_state(2)
    return int(a), int(b)


def _check_crop(split: SplitSource, crop_seconds: float) -> None:
    if split.max_seconds is not None and crop_seconds > split.max_seconds:
        raise DataError(
            f"data.crop_seconds={crop_seconds} is longer than every clip of "
            f"{split.where} (the longest is {split.max_seconds:.3f} s)"
        )


def train_dataset(
    data_cfg,
    *,
    sample_rate: int,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    num_epochs: int | None = None,
) -> grain.IterDataset:
    """The training batches of this process (batch_size is per process); see the docstring.

    num_epochs=None (the trainer's use) repeats forever; a number is for tests and tools.
    """
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} not in [0, {process_count})")
    split = open_split(data_cfg, data_cfg.train_split, sample_rate)
    _check_crop(split, data_cfg.crop_seconds)
    crop_len = round(data_cfg.crop_seconds * sample_rate)
    shuffle_seed, crop_seed = _seeds(seed)
    ds = grain.MapDataset.source(split.source)[process_index::process_count]
    if len(ds) == 0:
        raise DataError(
            f"{split.where} has {len(split.source)} records: none for process "
            f"{process_index} of {process_count}"
        )
    ds = ds.shuffle(seed=shuffle_seed).repeat(num_epochs)
    crop = RandomCrop(
        split.parse,
        sample_rate,
        crop_len,
        min_len=int(np.ceil(data_cfg.min_crop_fraction * crop_len)),
        gain_db=tuple(float(g) for g in data_cfg.gain_db),
        from_start=data_cfg.get("crop_mode", "random") == "utterance",
    )
    ds = ds.random_map(crop, seed=crop_seed)
    buffer = max(1, data_cfg.prefetch_buffer) * batch_size
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=data_cfg.read_threads, prefetch_buffer_size=buffer)
    )
    if data_cfg.num_workers > 0:
        _mark_flags_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=data_cfg.num_workers, per_worker_buffer_size=buffer
            ),
            worker_init_fn=_mark_flags_parsed,
        )
    return SkipCountingBatch(ds, batch_size, give_up_after=max(1000, 2 * len(split.source)))
