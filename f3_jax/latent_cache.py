"""python -m f3_jax.latent_cache --config configs/repr_demo.py [--config.data.latent_cache=DIR]
       [--splits train] [--dtype float32|float16] [--group 32] [--num_shards 0]

Precomputes, once, the latents that the frozen autoencoder of config.autoencoder.workdir gives
every record of the data splits, so that stages 2 and 3 train from them (config.data.latent_cache)
instead of running the autoencoder in every step. Each utterance is encoded whole, in inference
mode, with Tokenizer.encode (chunked and exact for any length); the records (latent_records.py)
go to DIR/<sha256[:16] of the export's weights>/<split>/ through the shard writer of prepare:
atomic per shard, and a rerun completes only the missing shards. A record that cannot be read
is skipped and counted. latent_info.json, written last, names the autoencoder (digest, export
step) and the latent_dim, hop, sample rate and counts. Run it on one machine (a shared
filesystem for multi-host training); validation never reads the cache.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence

from absl import flags
from ml_collections import config_flags

from f3_jax import cli, data, exports
from f3_jax.config import ConfigError
from f3_jax.data import latent_records
from f3_jax.data.audio_io import resample
from f3_jax.data.dataset_info import write_json_atomic
from f3_jax.data.shards import Job, MapFn, Result, write_split
from f3_jax.data.sources import SplitSource, open_split
from f3_jax.errors import UsageError
from f3_jax.inference.tokenizer import Tokenizer

_CONFIG = _SPLITS = _DTYPE = _GROUP = _CHUNK = _WINDOWS = _NUM_SHARDS = None


def define_flags() -> None:
    """The CLI's flags, defined only when run as a program: other modules (f3_jax.eval,
    f3_jax.tokenize) define flags of the same names, and tests import them side by side."""
    global _CONFIG, _SPLITS, _DTYPE, _GROUP, _CHUNK, _WINDOWS, _NUM_SHARDS
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        None,
        "A stage-2 or stage-3 config (configs/repr_*.py, flow_*.py).",
        lock_config=True,
    )
    _SPLITS = flags.DEFINE_list("splits", ["train"], "Data splits to encode.")
    _DTYPE = flags.DEFINE_enum("dtype", "float32", list(latent_records.DTYPES), "Stored latents.")
    _GROUP = flags.DEFINE_integer("group", 32, "Utterances per Tokenizer.encode call.")
    _CHUNK = flags.DEFINE_integer("chunk_frames", 500, "Latent frames per window.")
    _WINDOWS = flags.DEFINE_integer("batch_windows", 8, "Windows per jitted encoder call.")
    _NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Shards per split (0: 1 per 1024 records).")


RECORDS_PER_SHARD = 1024


@dataclasses.dataclass(frozen=True)
class GroupEncoder:
    """Jobs (record indices of one split) -> latent records, one Tokenizer call per group."""

    tok: Tokenizer
    split: SplitSource
    dtype: str

    def _read(self, index: int):
        """(Utterance, audio at the autoencoder's rate), or the reason the record is skipped."""
        try:
            u = self.split.parse(self.split.source[index])
            wav = resample(u.read(), u.sample_rate, self.tok.sample_rate)
        except Exception as e:  # one bad record must not stop the others (as in prepare)
            return f"{type(e).__name__}: {e}"
        return (u, wav) if wav.shape[0] else "no samples"

    def __call__(self, jobs: Sequence[Job]) -> list[Result]:
        read = [self._read(j.args[0]) for j in jobs]
        good = [r for r in read if not isinstance(r, str)]
        latents = iter(self.tok.encode([wav for _, wav in good])) if good else iter(())
        return [self._result(r, latents) for r in read]

    def _result(self, read, latents: Iterator) -> Result:
        if isinstance(read, str):
            return Result(None, reason=read)
        u, wav = read
        rec = latent_records.encode(
            next(latents),
            uid=u.uid,
            text=u.text,
            labels=u.labels,
            num_samples=wav.shape[0],
            sample_rate=self.tok.sample_rate,
            dtype=self.dtype,
        )
        return Result(rec, seconds=wav.shape[0] / self.tok.sample_rate, label_names=tuple(u.labels))


def grouped(size: int) -> MapFn:
    """A write_split map handing `fn` up to `size` jobs at a time, so that windows of equal
    length from many utterances share one jitted encoder call."""

    def map_fn(fn, jobs):
        for k in range(0, len(jobs), size):
            yield from fn(jobs[k : k + size])

    return map_fn


def build(
    config,
    splits: Sequence[str],
    *,
    dtype: str = "float32",
    group: int = 32,
    num_shards: int = 0,
    chunk_frames: int = 500,
    batch_windows: int = 8,
) -> dict:
    """Writes (or completes) the cache of `splits`; returns the updated latent_info."""
    root = config.data.get("latent_cache", "")
    if not root:
        raise ConfigError("config.data.latent_cache is empty: --config.data.latent_cache=DIR")
    export = exports.find(config.autoencoder.workdir, "autoencoder.workdir", "stage 1")
    digest = exports.file_digest(os.path.join(export, exports.WEIGHTS))
    variables, ae_config, step = exports.read(export)
    if int(ae_config.sample_rate) != int(config.sample_rate):
        raise ConfigError(
            f"config.sample_rate={config.sample_rate} differs from the autoencoder's "
            f"{ae_config.sample_rate} ({export}/config.json)"
        )
    tok = Tokenizer(ae_config, variables, chunk_frames=chunk_frames, batch_windows=batch_windows)
    directory = latent_records.cache_dir(root, digest)
    data.ensure_dataset(config.data, config.sample_rate)
    summaries = {}
    for name in splits:
        split = open_split(config.data, name, config.sample_rate)
        n = len(split.source)
        jobs = [Job(f"{name}[{i}]", (i,)) for i in range(n)]
        settings = {"autoencoder": digest, "dtype": dtype, "source": split.where, "records": n}
        summary = write_split(
            directory,
            name,
            jobs,
            GroupEncoder(tok, split, dtype),
            num_shards=num_shards or math.ceil(n / RECORDS_PER_SHARD),
            map_fn=grouped(group),
            settings=settings,
            desc=f"latents {name}",
        )
        del summary["encoding"]  # of audio records; these hold latents of `dtype`
        summaries[name] = summary | {"dtype": dtype, "source": split.where}
    about = {
        "autoencoder_digest": digest,
        "autoencoder_export": os.path.abspath(export),
        "export_step": int(step),
        "latent_dim": tok.latent_dim,
        "hop": tok.hop,
        "sample_rate": tok.sample_rate,
    }
    return _update_info(directory, about, summaries)


def _update_info(directory: str, about: dict, summaries: dict) -> dict:
    """Adds or replaces splits in latent_info.json (one atomic write, after the shards)."""
    info = latent_records.read_info(directory) or {}
    info.update({"format": latent_records.FORMAT, "version": 1} | about)
    info.setdefault("splits", {}).update(summaries)
    info["num_examples"] = sum(s["num_examples"] for s in info["splits"].values())
    info["num_skipped"] = sum(s["num_skipped"] for s in info["splits"].values())
    write_json_atomic(os.path.join(directory, latent_records.INFO_NAME), info)
    return info


def main(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is None:
        raise UsageError(
            "usage: python -m f3_jax.latent_cache --config configs/X.py [--splits train]"
        )
    info = build(
        _CONFIG.value,
        _SPLITS.value,
        dtype=_DTYPE.value,
        group=_GROUP.value,
        num_shards=_NUM_SHARDS.value,
        chunk_frames=_CHUNK.value,
        batch_windows=_WINDOWS.value,
    )
    root = _CONFIG.value.data.latent_cache
    directory = latent_records.cache_dir(root, info["autoencoder_digest"])
    for name in _SPLITS.value:
        s = info["splits"][name]
        print(
            f"{directory}/{name}: {s['num_examples']} utterances, {s['hours']:.3f} h, "
            f"{s['num_skipped']} skipped (reasons in {latent_records.INFO_NAME})"
        )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
