"""Exports: a run's inference weights as WORKDIR/export/{weights.safetensors, config.json}.

The one way f3_jax writes and reads the weights a later stage, the `Tokenizer`, the `Generator`
and the latent cache use. An export is written at every checkpoint (process 0, each file whole,
config.json last) and holds the stage's inference variables (stage 1: the generator's EMA or
raw weights and batch statistics; stage 2: the trained modules and the quantizer; stage 3: the
heads), the resolved config, the step, and the *layout*: which subtree of the train state each
collection was taken from ({"params": "gen/ema", ...}). A stage-2 or stage-3 export also holds
copies of the earlier stages' exports (export/autoencoder/, export/representation/), so one
workdir is enough for inference.

`read_inference(workdir)` reads the export; when its files are unreadable (truncated, deleted)
or it holds another step than the one asked for, it takes the same variables from a checkpoint
through the layout the checkpoint recorded, and says so in one warning.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from f3_jax import checkpoint, storage
from f3_jax.config import ConfigError
from f3_jax.errors import ModelFileError

EXPORT_DIR = "export"
WEIGHTS, CONFIG = "weights.safetensors", "config.json"
# The state subtrees a stage-1 export was taken from, for checkpoints written before exports
# and checkpoints recorded their layout (EMA weights when the run kept them).
LEGACY_STAGE1_LAYOUT = {"params": ["gen/ema", "gen/params"], "batch_stats": ["gen/batch_stats"]}

file_digest = storage.file_digest  # SHA-256 of an export's weights, local or remote


class MissingExportError(ConfigError, FileNotFoundError):
    """A workdir without an export where one is needed; the message names the field."""


# ---- flat trees ------------------------------------------------------------------------
def flat_arrays(tree) -> dict[str, np.ndarray]:
    """{"a/b/c": host array} of every leaf of a pytree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {checkpoint.path_key(p): np.asarray(jax.device_get(v)) for p, v in leaves}


def unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def subtree(tree: dict, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def layout_of(select: Callable[[dict], dict], state: dict) -> dict[str, str]:
    """{collection: state path} of the subtrees `select(state)` takes from `state` (found by
    identity, so any state works: arrays, ShapeDtypeStructs)."""
    paths = {}
    for name, part in select(state).items():
        found = _find(state, part)
        if found is None:
            raise ValueError(f"{name!r} of the inference variables is not a subtree of the state")
        paths[name] = found
    return paths


def _find(tree, target, prefix: str = "") -> str | None:
    if tree is target:
        return prefix.rstrip("/")
    if isinstance(tree, dict):
        for key, value in tree.items():
            found = _find(value, target, f"{prefix}{key}/")
            if found is not None:
                return found
    return None


def from_state(state: dict, layout: dict) -> dict:
    """Inference variables out of a (restored) train state through a layout; a layout entry
    may list alternatives, the first present wins (LEGACY_STAGE1_LAYOUT)."""
    out = {}
    for name, paths in layout.items():
        for path in [paths] if isinstance(paths, str) else paths:
            try:
                out[name] = subtree(state, path)
                break
            except KeyError:
                continue
    return out


# ---- writing ---------------------------------------------------------------------------
def write(workdir: str, variables: dict, config, step: int, layout: dict | None = None) -> None:
    """Writes WORKDIR/export/{weights.safetensors,config.json}, each file whole (process 0).

    WORKDIR may be a gs:// (or other etils.epath) URL: see f3_jax.storage.write_bytes.
    """
    from safetensors.numpy import save

    if jax.process_index() != 0:
        return
    out = epath.Path(workdir) / EXPORT_DIR
    storage.ensure_dir(out)
    # 0644: safetensors' save_file would write 0600; others on a shared filesystem must read it
    storage.write_bytes(out / WEIGHTS, save(flat_arrays(variables)), mode=0o644)
    record = checkpoint.config_record(config, layout) | {"step": int(step)}
    storage.write_text(out / CONFIG, json.dumps(record, indent=1), mode=0o644)


def copy(source: str, dest: str) -> None:
    """Copies the export directory `source` to `dest` unless the same weights are there.

    Either may be local or a gs:// URL (`storage.copy_tree`: config.json is written last, so a
    reader never takes a half-copied export for a whole one)."""
    have = storage.as_path(dest, WEIGHTS)
    if have.exists() and file_digest(have) == file_digest(storage.as_path(source, WEIGHTS)):
        return
    storage.copy_tree(source, dest)


class BackgroundWrites:
    """Runs file writes (exports) on one background thread, one at a time, in order.

    The train loop fetches an export's weights to the host at the step it is taken and lets
    this write the files while the next steps run. A failed write is raised by the next
    `submit` or by `wait`: an export is never lost silently.
    """

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="f3_export")
        self._pending: concurrent.futures.Future | None = None

    def submit(self, write_fn: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(write_fn)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


# ---- reading ---------------------------------------------------------------------------
def find(workdir: str, field: str, stage_name: str) -> str:
    """WORKDIR/export (or WORKDIR itself when it is an export), else a MissingExportError
    naming config field `field` (local or gs://)."""
    if storage.as_path(workdir, WEIGHTS).exists():
        return workdir
    export = os.path.join(workdir, EXPORT_DIR)
    if not storage.as_path(export, CONFIG).exists():
        raise MissingExportError(
            f"config.{field}={workdir!r} has no {EXPORT_DIR}/{CONFIG}: train {stage_name} there "
            "first"
        )
    return export


def read_record(path: str) -> dict:
    """An export's config.json as a dict; ModelFileError naming it when unreadable."""
    config_file = epath.Path(path) / CONFIG
    try:
        record = json.loads(config_file.read_text())
        ml_collections.ConfigDict(record["config"])
        int(record["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(
            f"{config_file}: unreadable export config ({checkpoint.first_line(e)})"
        ) from e
    return record


def read(path: str) -> tuple[dict, ml_collections.ConfigDict, int]:
    """(variables, config, step) of an export directory (local, or a gs:// URL).

    A missing, truncated or corrupt file raises ModelFileError naming it.
    """
    from safetensors.numpy import load, load_file

    record = read_record(path)
    weights = epath.Path(path) / WEIGHTS
    try:
        if storage.is_remote(path):
            flat = load(weights.read_bytes())
        else:
            flat = load_file(os.fspath(weights))  # memory-mapped
    except Exception as e:  # safetensors raises its own error types, and OSError
        raise ModelFileError(
            f"{weights}: unreadable export weights, truncated or corrupt "
            f"({checkpoint.first_line(e)}); a new export is written at the next checkpoint"
        ) from e
    return unflatten(flat), ml_collections.ConfigDict(record["config"]), int(record["step"])


def read_inference(
    workdir: str, step: int | None = None, *, field: str = "workdir", stage_name: str = "it"
) -> tuple[dict, ml_collections.ConfigDict, int]:
    """(variables, config, step) of a run: its export, or a checkpoint's same variables when
    the export is unreadable, missing, or holds another step than `step` (None: any)."""
    export = os.path.join(workdir, EXPORT_DIR)
    problem = None
    if storage.as_path(workdir, WEIGHTS).exists():  # an export directory itself
        return read(workdir)
    if storage.as_path(export, CONFIG).exists() or storage.as_path(export, WEIGHTS).exists():
        try:
            variables, config, found = read(export)
            if step is None or step == found:
                return variables, config, found
        except ModelFileError as e:
            problem = str(e)
    if not storage.as_path(workdir, "checkpoints").is_dir():
        if problem:
            raise ModelFileError(f"{problem}, and {workdir} has no checkpoints/ to read instead")
        raise MissingExportError(
            f"{field}={workdir!r} has no {EXPORT_DIR}/ and no checkpoints/: train {stage_name} "
            "there first"
        )
    variables, config, found = _from_checkpoint(workdir, step)
    if problem:
        logging.warning("%s; using checkpoint %d of %s instead", problem, found, workdir)
    return variables, config, found


def _from_checkpoint(workdir: str, step: int | None) -> tuple[dict, ml_collections.ConfigDict, int]:
    """The inference variables of checkpoint `step` (default: the latest) by its layout."""
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise MissingExportError(f"no checkpoint under {workdir}/checkpoints")
        record = ckpt.saved_config(step)
        config = ml_collections.ConfigDict(record["config"])
        layout = record.get("export_layout")
        if layout is None and config.get("stage") == "autoencoder":
            layout = LEGACY_STAGE1_LAYOUT
        if layout is None:
            raise ModelFileError(
                f"checkpoint {step} of {workdir} predates recorded export layouts: read its "
                "export instead"
            )
        variables = from_state(ckpt.restore_raw(step), layout)
    finally:
        ckpt.close()
    return jax.tree.map(np.asarray, variables), config, step
