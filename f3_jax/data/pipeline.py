"""The trainer's entry points: ensure_dataset, train_dataset and eval_batches.

`data.source` picks an entry of data/registry.py, which says how to check the data and how to
make this process's training crops. WebDataset tar shards stream (data/webdataset_source.py);
the random-access sources (array_record, tfds) and the latent cache go through this
training pipeline (grain), per process:

    MapDataset.source(split)              random access over every record of the split
      .shuffle(seed).repeat(None)         a new order each epoch; the first epoch's order does
                                          not depend on how many epochs follow (none configured:
                                          the trainer stops by step count)
      .random_map(RandomCrop)             crop of data.crop_seconds (shorter: padded + mask),
                                          optional gain; a bad record becomes a skip marker.
                                          Seeded by global index: the same for every process
      ProcessSlice(global batch, process) this process's rows of every global batch
                                          (data/global_order.py): the global batches do not
                                          depend on the process count, so a job resumes with
                                          another count where it stopped
      .to_iter_dataset(read threads)
      [.mp_prefetch(data.num_workers)]    worker processes when num_workers > 0
      SkipCountingBatch(batch_size)       drops and counts skip markers, stacks a batch

The iterator of the result has get_state/set_state (for grain.checkpoint / orbax): a restored
iterator yields exactly the batches the original would have yielded next. Batches:
`audio` (B, L) float32 in [-1, 1], `mask` (B, L) float32, `text` and `id` (B,) object arrays of
str ("" when a record has no transcript), `num_skipped` int64 scalar.

With a latent cache (data.latent_cache, stages 2 and 3) the source is the cache's shards of the
split and the crop is latent_records.LatentCrop, the rest is the same: batches hold `latents`
(B, T, D) float32 and `frame_mask` (B, T) float32 instead of audio and mask, for
T = crop_seconds * sample_rate // hop frames.
"""

from __future__ import annotations

import os

import grain
import numpy as np
from absl import flags, logging

from f3_jax.data import registry
from f3_jax.data.batching import SkipCountingBatch
from f3_jax.data.crops import RandomCrop
from f3_jax.data.dataset_info import read_info
from f3_jax.data.elements import TrainElements, seeds
from f3_jax.data.errors import DataError
from f3_jax.data.evaluation import eval_batches
from f3_jax.data.global_order import ProcessSlice
from f3_jax.data.latent_records import LatentCache, LatentCrop, split_shards
from f3_jax.data.sources import SplitSource, open_split

__all__ = ["ensure_dataset", "train_dataset", "eval_batches", "TrainElements"]

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
    registry.get(data_cfg.source).function("ensure")(data_cfg, sample_rate)


def ensure_records(data_cfg, sample_rate: int) -> None:
    """data.source="array_record": dataset_info.json at data.path, or the demo corpus built."""
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


def ensure_tfds(data_cfg, sample_rate: int) -> None:
    """data.source="tfds": a non-empty data.tfds_data_dir, or the demo corpus converted."""
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
    latent_cache: LatentCache | None = None,
    start: int = 0,
    num_skipped: int = 0,
) -> grain.IterDataset:
    """The training batches of this process (batch_size is per process); see the docstring.

    num_epochs=None (the trainer's use) repeats forever; a number is for tests and tools
    (a last global batch that the data does not fill is dropped).
    latent_cache (stages 2 and 3 with data.latent_cache): batches of cached latents instead.
    start: the global element to begin at, num_skipped: the skipped-record count to carry
    on from (both from global_order.restore_position when resuming).
    """
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} not in [0, {process_count})")
    order = dict(
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        num_epochs=num_epochs,
        start=start,
    )
    if latent_cache is not None:
        source, where, crop = _latent_source(data_cfg, latent_cache, sample_rate)
        elements = _random_access(data_cfg, source, where, crop, **order)
    else:
        train = registry.get(data_cfg.source).function("train_elements")
        elements = train(data_cfg, sample_rate=sample_rate, **order)
    position = {
        "start": start,
        "global_batch_size": batch_size * process_count,
        "num_skipped": num_skipped,
    }
    batches = SkipCountingBatch(
        elements.dataset, batch_size, give_up_after=elements.give_up_after, position=position
    )
    return batches.map(_rename_latents) if latent_cache is not None else batches


def random_access_elements(data_cfg, *, sample_rate: int, **order) -> TrainElements:
    """Sources with random access (array_record, tfds): crops of data.train_split."""
    split = open_split(data_cfg, data_cfg.train_split, sample_rate)
    _check_crop(split, data_cfg.crop_seconds)
    crop_len = round(data_cfg.crop_seconds * sample_rate)
    crop = RandomCrop(
        split.parse,
        sample_rate,
        crop_len,
        min_len=int(np.ceil(data_cfg.min_crop_fraction * crop_len)),
        gain_db=tuple(float(g) for g in data_cfg.gain_db),
        from_start=data_cfg.get("crop_mode", "random") == "utterance",
    )
    return _random_access(data_cfg, split.source, split.where, crop, **order)


def _random_access(
    data_cfg,
    source,
    where: str,
    crop,
    *,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    num_epochs: int | None,
    start: int,
) -> TrainElements:
    """shuffle, repeat, crop by global index, this process's rows, read threads/workers."""
    if len(source) == 0:
        raise DataError(f"{where} has no records")
    shuffle_seed, crop_seed = seeds(seed)
    ds = grain.MapDataset.source(source).shuffle(seed=shuffle_seed).repeat(num_epochs)
    ds = ds.random_map(crop, seed=crop_seed)
    ds = ProcessSlice(
        ds,
        global_batch_size=batch_size * process_count,
        process_index=process_index,
        process_count=process_count,
        start=start,
    )
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
    return TrainElements(ds, where, max(1000, 2 * len(source)))


def _latent_source(data_cfg, cache: LatentCache, sample_rate: int):
    """(source, description, crop) of the cached latents of data.train_split."""
    shards, summary = split_shards(cache, data_cfg.train_split)
    where = f"latent cache {cache.directory} (split {data_cfg.train_split})"
    if int(cache.info["sample_rate"]) != sample_rate:
        raise DataError(f"{where} is at {cache.info['sample_rate']} Hz, not {sample_rate} Hz")
    if data_cfg.crop_seconds > summary.get("max_seconds", np.inf):
        raise DataError(
            f"data.crop_seconds={data_cfg.crop_seconds} is longer than every clip of "
            f"{where} (the longest is {summary['max_seconds']:.3f} s)"
        )
    if tuple(data_cfg.gain_db) != (0.0, 0.0):
        # Latents were computed once, without gain: the augmentation cannot apply.
        logging.warning("data.gain_db=%s is ignored with data.latent_cache", data_cfg.gain_db)
    crop_len = round(data_cfg.crop_seconds * sample_rate)
    crop = LatentCrop(
        cache.hop,
        crop_len // cache.hop,
        crop_len,
        min_len=int(np.ceil(data_cfg.min_crop_fraction * crop_len)),
        from_start=data_cfg.get("crop_mode", "random") == "utterance",
    )
    return grain.sources.ArrayRecordDataSource(shards), where, crop


def _rename_latents(batch: dict) -> dict:
    """LatentCrop's rows travel under the audio keys through SkipCountingBatch."""
    batch["latents"], batch["frame_mask"] = batch.pop("audio"), batch.pop("mask")
    return batch
