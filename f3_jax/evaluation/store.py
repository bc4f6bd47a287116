"""The files of WORKDIR/eval/: what was evaluated, every metric per step, and per-step details.

  evaluated.json          {split: [steps]}: each step is evaluated once per split (--watch)
  metrics.json            {step: {"<split>/<name>": value}}: every scalar of every evaluation
  details/<split>-<step>.json   the step's report panels and headline metrics
  figures/                PNGs of the report (report.py)

Every file is written whole (f3_jax.storage.write_bytes: a temporary name and a rename on a
local disk, one upload on object storage), so a reader (or a killed eval) never sees half a
file. The workdir may be a gs:// (or other etils.epath) URL. Non-finite values are stored as
null (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
import os

from f3_jax import storage

EVAL_DIR = "eval"


def write_json(path: str, value) -> None:
    """Atomic (storage.write_text)."""
    # Insertion order kept: panels list their series in the order they are drawn.
    storage.write_text(path, json.dumps(_finite(value), indent=1, allow_nan=False))


def read_json(path: str, default):
    text = storage.read_text(path)
    return default if text is None else json.loads(text)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class EvalStore:
    """Reads and updates the files of one WORKDIR/eval directory (one eval process at a time)."""

    def __init__(self, workdir: str):
        self.directory = os.path.join(workdir, EVAL_DIR)
        self.figures = os.path.join(self.directory, "figures")
        self.details_dir = os.path.join(self.directory, "details")
        for d in (self.directory, self.figures, self.details_dir):
            storage.ensure_dir(d)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def evaluated(self, split: str) -> list[int]:
        return sorted(int(s) for s in read_json(self._path("evaluated.json"), {}).get(split, []))

    def mark_evaluated(self, split: str, step: int) -> None:
        record = read_json(self._path("evaluated.json"), {})
        record[split] = sorted({int(s) for s in record.get(split, [])} | {int(step)})
        write_json(self._path("evaluated.json"), record)

    def metrics(self) -> dict[int, dict[str, float]]:
        """{step: {name: value}}, steps ascending; null values come back as NaN."""
        raw = read_json(self._path("metrics.json"), {})
        return {
            int(step): {k: float("nan") if v is None else v for k, v in values.items()}
            for step, values in sorted(raw.items(), key=lambda kv: int(kv[0]))
        }

    def add_metrics(self, step: int, values: dict[str, float]) -> None:
        """Merges one evaluation's scalars into metrics.json (a re-evaluation overwrites)."""
        raw = read_json(self._path("metrics.json"), {})
        raw.setdefault(str(int(step)), {}).update({k: float(v) for k, v in values.items()})
        by_step = {
            k: dict(sorted(v.items())) for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))
        }
        write_json(self._path("metrics.json"), by_step)

    def write_details(self, split: str, step: int, details: dict) -> None:
        write_json(os.path.join(self.details_dir, f"{split}-{int(step)}.json"), details)

    def details(self, split: str) -> dict[int, dict]:
        """{step: details} of a split, steps ascending."""
        out = {}
        prefix = f"{split}-"
        for name in storage.listdir(self.details_dir):
            stem = name[: -len(".json")]
            if name.endswith(".json") and stem.startswith(prefix) and stem[len(prefix) :].isdigit():
                out[int(stem[len(prefix) :])] = read_json(os.path.join(self.details_dir, name), {})
        return dict(sorted(out.items()))

    def splits(self) -> list[str]:
        return sorted(read_json(self._path("evaluated.json"), {}))
