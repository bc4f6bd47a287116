"""Checkpoints of the train loop, and the rescue of a step when something fails after it.

A failure anywhere after a step (validation, logging, audio samples, an export, Ctrl-C) must
not lose the steps since the last checkpoint: the loop saves that step's state first, if it is
finite, then lets the failure end the run.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from absl import logging

from f3_jax import exports


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class StepSaver:
    """Saves checkpoints (with the export) and, when anything fails after a step, the state
    of that step: a failure in validation, logging, sampling or an export never loses the
    steps since the last checkpoint."""

    def __init__(self, trainer, config, ckpt, workdir: str, start: int):
        self.trainer, self.config, self.ckpt = trainer, config, ckpt
        self.workdir, self.saved_step = workdir, start
        self.exports = exports.BackgroundWrites()  # written while the next steps run

    def save(self, step: int, state, data_state) -> None:
        """data_state: the data iterator's state after step `step`'s batch."""
        # Returns once the state is on the host; files are written in the background.
        self._save(step, state, data_state)
        logging.info("checkpoint of step %d: %s/%d", step, self.ckpt.directory, step)
        write = self.trainer.export_later(self.workdir, state, step)
        where = os.path.join(self.workdir, exports.EXPORT_DIR)

        def write_and_say() -> None:
            write()
            logging.info("export of step %d: %s", step, where)

        self.exports.submit(write_and_say)

    def rescue(self, step: int, state, data_state, error: BaseException) -> None:
        """After `error` past step `step` (whose state is intact): save it unless saved."""
        if step <= self.saved_step:
            return
        if not bool(_all_finite(state)):
            logging.error("not saving step %d after %s: its state is not finite", step, error)
            return
        logging.error(
            "%s after step %d: saving a checkpoint of it first", type(error).__name__, step
        )
        self._save(step, state, data_state)

    def _save(self, step: int, state, data_state) -> None:
        layout = self.trainer.export_layout
        self.ckpt.save(step, state, data_state, self.config, force=True, export_layout=layout)
        self.saved_step = step

    def close(self) -> None:
        """Waits for the checkpoint and export writes; raises a failed export's error."""
        try:
            self.ckpt.wait()
        finally:
            self.exports.close()
