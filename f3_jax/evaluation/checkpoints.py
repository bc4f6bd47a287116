"""Read-only access to a training run's Orbax checkpoints, for an evaluator beside training.

`checkpoint.Checkpointer` is the training side: its manager creates the checkpoint directory
and deletes `<step>.orbax-checkpoint-tmp*` directories when it starts, which would destroy a
save that the training process has in flight. This reader only lists and reads: finalized
steps (Orbax's own test: the final name, plus `commit_success.txt` on object stores), the
saved config (a JSON item) and the `state` item restored onto the caller's shardings. The
data iterator item is never touched. Restores are strict, with the checks of checkpoint.py.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp
from etils import epath

from f3_jax import checkpoint

CHECKPOINTS_DIR = "checkpoints"


class CheckpointReader:
    """Finalized steps of WORKDIR/checkpoints and restores of their `state` item."""

    def __init__(self, workdir: str):
        if "://" not in str(workdir):  # Orbax needs absolute paths
            workdir = os.path.abspath(workdir)
        self.directory = epath.Path(workdir) / CHECKPOINTS_DIR
        # Item handlers, not Checkpointers: a Checkpointer looks for step metadata inside the
        # item directory and warns on every read of a manager-written checkpoint.
        self._state = ocp.StandardCheckpointHandler()
        self._json = ocp.JsonCheckpointHandler()

    def steps(self) -> list[int]:
        """Steps whose save has finished, ascending; [] when nothing was saved yet."""
        if not self.directory.exists():
            return []
        return sorted(ocp.path.step.checkpoint_steps(self.directory))

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def has_step(self, step: int) -> bool:
        return (self.directory / str(step) / "state").exists()

    def saved_config(self, step: int) -> dict:
        """{"config": the resolved config as saved, "f3_jax_version": ...}."""
        return self._json.restore(
            self.directory / str(step) / "config", args=ocp.args.JsonRestore()
        )

    def restore_state(self, step: int, abstract_state):
        """The `state` item of `step` on the shardings of `abstract_state` (ShapeDtypeStructs).

        Strict: a missing, extra or mis-shaped leaf raises CheckpointMismatchError naming it.
        """
        path = self.directory / str(step) / "state"
        checkpoint.check_same_tree(
            checkpoint.flatten_shapes(abstract_state),
            checkpoint.flatten_shapes(self._state.metadata(path).tree),
            f"checkpoint {path.parent}",
        )
        return self._state.restore(path, args=ocp.args.StandardRestore(abstract_state))

    def close(self) -> None:
        self._state.close()
        self._json.close()
