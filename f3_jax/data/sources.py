"""Random-access sources of one split: records written by prepare/demo_corpus, TFDS, tars.

Every kind is opened as a grain RandomAccessDataSource of raw items plus a picklable `parse`
that turns a raw item into a records.Utterance, so that the pipelines do not care which it is.
`open_split` dispatches on `data.source` through data/registry.py.

- `data.source = "array_record"`: `data.path` holds dataset_info.json and <split>/ shards.
- `data.source = "tfds"`: `tfds.data_source(data.tfds_name, split, data_dir=data.tfds_data_dir)`
  over ArrayRecord files. Features: `audio` (or `speech`) int16/int/float (L,) or (L, C),
  optional `sample_rate` (else the audio is taken to be at the requested rate), `text`, `id`,
  and numeric scalars `label_<name>`. Reading needs no TensorFlow; building TFDS catalog audio
  datasets (tfds.features.Audio) does: `pip install .[tfds-audio]`.
- `data.source = "webdataset"`: tar shards, indexed on open (data/webdataset_source.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import grain

from f3_jax.data import records
from f3_jax.data.dataset_info import INFO_NAME, read_info
from f3_jax.data.errors import DataError

_TFDS_SCAN_LIMIT = 20000  # longest-clip check reads at most this many TFDS examples


@dataclasses.dataclass(frozen=True)
class SplitSource:
    source: Any  # grain RandomAccessDataSource: len() and [i] -> raw item
    parse: Callable[[Any], records.Utterance]
    where: str  # for error messages: the path (and split) this came from
    max_seconds: float | None  # longest clip at its stored rate, when known
    label_names: tuple[str, ...]


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


@dataclasses.dataclass(frozen=True)
class TfdsParser:
    """TFDS example dict -> Utterance. Picklable, so it can run in grain worker processes."""

    default_rate: int

    def __call__(self, ex: dict) -> records.Utterance:
        audio = ex["audio"] if "audio" in ex else ex.get("speech")
        if audio is None:
            raise records.AudioDecodeError(f"TFDS example without audio/speech: {sorted(ex)}")
        labels = {k[len("label_") :]: float(v) for k, v in ex.items() if k.startswith("label_")}
        return records.from_arrays(
            audio,
            sample_rate=int(ex.get("sample_rate", self.default_rate)),
            uid=_text(ex.get("id", "")),
            text=_text(ex.get("text", "")),
            labels=labels,
        )


def array_record_split(data_cfg, split: str, sample_rate: int) -> SplitSource:
    """A split of a directory written by prepare or demo_corpus (data.path)."""
    del sample_rate  # records carry their rate
    path = data_cfg.path
    info = read_info(path)
    if not os.path.isdir(path):
        raise DataError(f"data.path={path!r} does not exist")
    if info is None:
        raise DataError(
            f"data.path={path!r} holds no readable {INFO_NAME}: run "
            f"`python -m f3_jax.data.prepare --output {path}` or demo_corpus first"
        )
    if split not in info["splits"]:
        raise DataError(
            f"data.path={path!r} has no split {split!r} (it has {sorted(info['splits'])})"
        )
    s = info["splits"][split]
    if s["num_examples"] == 0:
        raise DataError(f"split {split!r} of data.path={path!r} holds no records")
    shards = [os.path.join(path, name) for name in s["shards"]]
    missing = [p for p in shards if not os.path.exists(p)]
    if missing:
        raise DataError(f"shard files listed in {path}/{INFO_NAME} are missing: {missing[:3]}")
    return SplitSource(
        grain.sources.ArrayRecordDataSource(shards),
        records.decode,
        f"{path} (split {split})",
        s.get("max_seconds"),
        tuple(s.get("label_names", ())),
    )


def tfds_split(data_cfg, split: str, sample_rate: int) -> SplitSource:
    """A TFDS split (data.tfds_name in data.tfds_data_dir) over ArrayRecord files."""
    name, data_dir = data_cfg.tfds_name, data_cfg.tfds_data_dir
    if not name:
        raise DataError("data.source='tfds' needs data.tfds_name")
    if not data_dir or not os.path.isdir(data_dir) or not os.listdir(data_dir):
        raise DataError(f"data.tfds_data_dir={data_dir!r} is missing or empty")
    import tensorflow_datasets as tfds  # lazy: slow import, only this path needs it

    from f3_jax.data import tfds_demo  # noqa: F401  registers the demo corpus builder

    try:
        src = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # tfds raises many kinds for a missing dataset or split
        raise DataError(f"cannot open TFDS {name!r} split {split!r} in {data_dir}: {e}") from e
    if len(src) == 0:
        raise DataError(f"TFDS {name!r} split {split!r} in {data_dir} holds no examples")
    parse = TfdsParser(sample_rate)
    keys = src[0].keys()
    labels = tuple(sorted(k[len("label_") :] for k in keys if k.startswith("label_")))
    return SplitSource(
        src,
        parse,
        f"TFDS {name} in {data_dir} (split {split})",
        _scan_max_seconds(src, parse),
        labels,
    )


def _scan_max_seconds(src, parse) -> float | None:
    if len(src) > _TFDS_SCAN_LIMIT:
        return None
    longest = 0.0
    for i in range(len(src)):
        try:
            u = parse(src[i])
        except records.AudioDecodeError:
            continue
        longest = max(longest, u.num_samples / u.sample_rate)
    return longest


def open_split(data_cfg, split: str, sample_rate: int) -> SplitSource:
    """The configured source's split; raises DataError naming the path when it is unusable."""
    from f3_jax.data import registry

    return registry.get(data_cfg.source).function("open_split")(data_cfg, split, sample_rate)
