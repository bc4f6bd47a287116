"""The first train step compiles on a thread while the loop builds the state.

Before its first step the loop builds the train state (a program of its own: the parameter
initializers, about 40 s of XLA:CPU compile for ae_demo on 2 cores, most of it the random
number generators) or restores it, opens the data and may validate; then the first call of the
train step compiles the step (about 50 s there). Neither needs the other, and XLA compiles a
program on one thread, so the step compiles here, from the abstract state and the batch's
shapes (`programs.train_batch`), while the main thread does the rest. jax keeps the
executable: the loop's first call finds it and runs at once. `wait()` before that call, so
that the loop never compiles the same program a second time beside this one.

Nothing depends on it for correctness: if the shapes here differ from the real batch's, or the
compile fails, the first call compiles the step as it always did (a failure is logged, and the
real call reports it if it is real).
"""

from __future__ import annotations

import threading
import time

from absl import logging

from f3_jax.aot import programs


class FirstStep:
    """Compiles the train step of global step `step` on a daemon thread."""

    def __init__(self, trainer, step: int):
        self.seconds: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._compile, args=(trainer, step), name="first-step-compile", daemon=True
        )
        self._thread.start()

    def _compile(self, trainer, step: int) -> None:
        started = time.monotonic()
        try:
            batch, _ = programs.train_batch(trainer)
            trainer.lower_train_step(batch, step).compile()
            self.seconds = time.monotonic() - started
        except Exception as e:  # noqa: BLE001 - the loop's own first call compiles instead
            self.error = e

    def wait(self) -> None:
        """Blocks until the compile has ended; logs how it went."""
        self._thread.join()
        if self.error is not None:
            logging.info(
                "the train step did not compile ahead of the first step (%s: %s); "
                "the first step compiles it",
                type(self.error).__name__,
                str(self.error).splitlines()[0] if str(self.error) else "",
            )
        else:
            logging.info(
                "the train step compiled in %.0f s while the state was built", self.seconds
            )
