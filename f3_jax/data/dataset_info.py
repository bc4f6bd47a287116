"""`dataset_info.json`: what a prepared directory holds, per split, and what was skipped.

    {"format": "f3_jax.audio_records", "version": 1, "sample_rate": 24000, "encoding": "pcm16",
     "num_examples": N, "hours": h,
     "splits": {"train": {"num_examples", "hours", "seconds", "max_seconds", "min_seconds",
                          "shards": ["train/train-00000-of-00002.array_record", ...],
                          "label_names": [...], "num_skipped", "skipped": [{"path", "reason"}]}},
     ...extra keys of the writer (e.g. "demo" for the demo corpus)}

Shard paths are relative to the directory, so a prepared directory can be moved.
The file is written last and atomically: its presence means every listed shard is complete.
The directory may be local or a gs:// URL (data/files.py).
"""

from __future__ import annotations

import json
from typing import Any

from f3_jax.data import files
from f3_jax.data.errors import DataError

INFO_NAME = "dataset_info.json"
FORMAT = "f3_jax.audio_records"


def read_info(root: str) -> dict[str, Any] | None:
    """The parsed dataset_info.json of `root`, or None if there is none (or it is unreadable)."""
    try:
        info = json.loads(files.read_text(files.join(root, INFO_NAME)))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT else None


def write_json_atomic(path: str, obj: Any) -> None:
    """Readers see the old file or the new one, never half of one (local or remote)."""
    files.write_bytes(path, json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8"))


def update_info(
    root: str,
    summaries: dict[str, dict],
    *,
    sample_rate: int,
    encoding: str,
    extra: dict | None = None,
) -> dict:
    """Adds or replaces splits in root/dataset_info.json (one atomic write), recomputes totals."""
    info = read_info(root) or {}
    if info and info.get("sample_rate") != sample_rate:
        raise DataError(
            f"{root} holds {info.get('sample_rate')} Hz splits; cannot add {sample_rate} Hz "
            f"splits {sorted(summaries)} (use another --output or the same --sample_rate)"
        )
    info.update({"format": FORMAT, "version": 1, "sample_rate": sample_rate})
    info.setdefault("splits", {}).update(summaries)
    _totals(info, encoding)
    info.update(extra or {})
    write_json_atomic(files.join(root, INFO_NAME), info)
    return info


def _totals(info: dict, encoding: str) -> None:
    encodings = {s.get("encoding", encoding) for s in info["splits"].values()}
    info["encoding"] = encodings.pop() if len(encodings) == 1 else "mixed"
    info["num_examples"] = sum(s["num_examples"] for s in info["splits"].values())
    info["hours"] = sum(s["hours"] for s in info["splits"].values())


def drop_split(root: str, split: str) -> None:
    """Removes `split` from root/dataset_info.json (if listed) before its shards are rewritten,
    so that the file never lists shards that are not complete."""
    info = read_info(root)
    if not info or split not in info.get("splits", {}):
        return
    del info["splits"][split]
    _totals(info, info.get("encoding", ""))
    write_json_atomic(files.join(root, INFO_NAME), info)
