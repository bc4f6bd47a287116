"""Orbax checkpoints: train state, data iterator state and resolved config, plus exports.

Layout under WORKDIR/checkpoints/<step>/: `state` (the train-state pytree), `data` (the Grain
iterator state of every process, one JSON file each: a job of another process count reads all
of them to resume, see data/global_order.py), `config` (the resolved config and the f3_jax
version).
Restores are strict: the checkpoint's tree must match the expected one leaf for leaf (names
and shapes), and a mismatch stops with the first differing leaf named. Arrays restore onto
whatever shardings the caller asks for, so a checkpoint moves between meshes.

The `config` item also records the export layout (which state subtrees the stage's export
holds), so that f3_jax.exports can read a checkpoint's inference weights without stage code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as std_logging
import os
import re
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from f3_jax.errors import UserError
from f3_jax.stderr_noise import asyncio_noise_dropped
from f3_jax.version import __version__

# Files every committed step has (Orbax 0.12, OCDBT): checked before a restore so that a
# missing one is reported by name.
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt")


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint whose tree does not match the model being restored."""


class UnreadableCheckpointError(UserError, RuntimeError):
    """A committed checkpoint step whose files cannot be read back."""


@dataclasses.dataclass
class Restored:
    """What a resumed run starts from: a checkpoint step read back whole."""

    step: int
    state: Any
    data_start: int  # global element the data stream resumes at
    data_state: dict | None  # this process's iterator state (None: elastic resume)
    num_skipped: int  # bad records skipped so far
    config: dict  # the saved config record ({"config": ..., "f3_jax_version": ...})


def first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreadable_file(error: BaseException, directory) -> str:
    """The file under `directory` that an error of tensorstore or Orbax names, else the
    directory: what a user should look at."""
    named = re.findall(r'(?:file|path)[ :]+"?(/[^"\s\]]+)', str(error))
    inside = [p for p in named if p.startswith(os.fspath(directory))]
    return max(inside, key=len) if inside else os.fspath(directory)  # the most specific


@contextlib.contextmanager
def quiet_orbax_errors():
    """Orbax and asyncio log every failed read of a broken checkpoint at ERROR, tracebacks
    and all, and tensorstore prints more to stderr itself (f3_jax/stderr_noise.py); the
    caller reports the failure in one line."""
    loggers = [std_logging.getLogger(n) for n in ("absl", "asyncio", "orbax", "jax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(std_logging.CRITICAL)
    try:
        with asyncio_noise_dropped():
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def path_key(path) -> str:
    """A pytree path as "a/b/0" (dict keys, attribute names and indices)."""
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                parts.append(str(getattr(p, attr)))
                break
        else:
            parts.append(str(p))
    return "/".join(parts)


def flatten_shapes(tree) -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} for every array-like leaf (arrays, ShapeDtypeStructs, metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict)
    )[0]
    return {path_key(p): tuple(getattr(v, "shape", ())) for p, v in leaves if v is not None}


def check_same_tree(expected: dict, found: dict, what: str) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointMismatchError(
            f"{what}: leaf {missing[0]!r} is missing from the checkpoint"
            f" ({len(missing)} missing in all)"
        )
    if extra:
        raise CheckpointMismatchError(
            f"{what}: unexpected leaf {extra[0]!r} in the checkpoint"
            f" ({len(extra)} unexpected in all)"
        )
    for key, shape in expected.items():
        if tuple(found[key]) != tuple(shape):
            raise CheckpointMismatchError(
                f"{what}: leaf {key!r} has shape {tuple(found[key])} in the checkpoint, "
                f"the model expects {tuple(shape)}"
            )


def config_record(config: ml_collections.ConfigDict, export_layout: dict | None = None) -> dict:
    """The resolved config and the f3_jax version; with `export_layout`, which state subtree
    each collection of the stage's export comes from (f3_jax.exports.layout_of)."""
    record = {"config": json.loads(config.to_json_best_effort()), "f3_jax_version": __version__}
    return record | ({"export_layout": export_layout} if export_layout else {})


class Checkpointer:
    """Async Orbax manager for one workdir; every process calls save/restore together."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        # Orbax needs absolute paths; users pass relative ones (runs/ae_demo).
        if "://" not in str(workdir):
            workdir = os.path.abspath(workdir)
        self.directory = epath.Path(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            # A SIGKILL mid-save leaves <step>.orbax-checkpoint-tmp behind; drop it on start.
            cleanup_tmp_directories=True,
        )
        # Explicit handlers: a manager built in a new process (resume, eval, Tokenizer) must
        # know how to read each item's metadata before anything was saved through it.
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self, step: int, state, data_iter, config, *, force: bool = False, export_layout=None
    ) -> bool:
        items = {
            "state": ocp.args.StandardSave(state),
            "config": ocp.args.JsonSave(config_record(config, export_layout)),
        }
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def saved_config(self, step: int) -> dict:
        return self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        ).config

    def state_metadata(self, step: int):
        return self._manager.item_metadata(step)["state"].tree

    def restore(self, step: int, abstract_state):
        """Restores `state` onto the shardings in `abstract_state` (ShapeDtypeStructs).

        Strict: see module doc. The data position is read with `data_position`.
        """
        check_same_tree(
            flatten_shapes(abstract_state),
            flatten_shapes(self.state_metadata(step)),
            f"checkpoint {self.directory / str(step)}",
        )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        return self._manager.restore(step, args=ocp.args.Composite(**items)).state

    def data_position(self, step: int, global_batch_size: int) -> tuple[int, dict | None, int]:
        """(start, iterator state or None, skipped count) of this process; any process count."""
        from f3_jax.data.global_order import restore_position

        return restore_position(
            self.directory / str(step) / "data",
            jax.process_index(),
            jax.process_count(),
            global_batch_size,
        )

    def restore_latest(
        self, abstract_state, global_batch_size: int, *, fallback: bool = True
    ) -> Restored | None:
        """The newest committed step that reads back whole (state, data position, config).

        A step that cannot be read (a truncated or deleted file, a missing _METADATA) is
        logged as one warning naming the step and the file, moved aside to
        WORKDIR/checkpoints_unreadable/ (so that a relaunch does not meet it again and the
        step can be saved anew), and the previous committed step is tried; with
        `fallback=False` it raises UnreadableCheckpointError instead. A checkpoint of another
        architecture (CheckpointMismatchError) always raises: no older step would fit either.
        None when there is no checkpoint at all.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return self._restore_step(step, abstract_state, global_batch_size)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # any read failure of this step's files
                problem = UnreadableCheckpointError(
                    f"checkpoint step {step} is unreadable ({unreadable_file(e, self.directory)}"
                    f": {type(e).__name__}: {first_line(e)})"
                )
                if not fallback:
                    raise problem from e
                logging.warning("%s; %s", problem, self._set_aside(step))
        return None

    def _restore_step(self, step: int, abstract_state, global_batch_size: int) -> Restored:
        for name in REQUIRED_FILES:  # Orbax's own errors for these do not name the file
            if not (self.directory / str(step) / name).exists():
                raise FileNotFoundError(f"missing file {self.directory / str(step) / name}")
        with quiet_orbax_errors():
            config = self.saved_config(step)
            data_start, data_state, num_skipped = self.data_position(step, global_batch_size)
            state = self.restore(step, abstract_state)
            jax.block_until_ready(state)
        return Restored(step, state, data_start, data_state, num_skipped, config)

    def _set_aside(self, step: int) -> str:
        """Moves an unreadable step out of the manager's directory (process 0); says where."""
        target = self.directory.parent / "checkpoints_unreadable" / f"{step}-{int(time.time())}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self._manager.reload()
        return f"moved it to {target}, restoring the previous step"

    def restore_raw(self, step: int | None = None) -> Any:
        """The state tree as saved, on the default device (for inference and eval tools)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        meta = self.state_metadata(step)
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), meta
        )
        return self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        ).state

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
