"""The progress line of the train loop: honest rates and an ETA that counts what is ahead.

    step 120/500 | 2.41 steps/s | 7.7 audio-s/s | loss=154.1 mel=9.91 | ETA 4m10s

Rates are over the steps since the previous line, on step time only: the wall time between two
lines less the time spent compiling (JAX reports every compilation to jax.monitoring), in
validation and in checkpoint waits (the loop reports those). The ETA adds up what remains:

  - the remaining steps of each phase (stage 1: before and after `train.adversarial_start`) at
    that phase's rate, measured once the phase ran, else estimated from the current rate and
    the phases' relative cost (the trainer's FLOP counts);
  - the compilation of a phase not yet compiled, estimated as the first compilation scaled by
    the same relative cost;
  - the remaining validations and checkpoints at their measured mean duration (before the
    first validation its cost is unknown: the line then says "+ validation").
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

_COMPILE_EVENTS = ("/jax/core/compile/",)


class CompileClock:
    """Seconds JAX has spent compiling in this process (tracing, lowering, XLA), so far."""

    _total = 0.0
    _registered = False

    @classmethod
    def start(cls) -> None:
        if not cls._registered:
            jax.monitoring.register_event_duration_secs_listener(cls._on_event)
            cls._registered = True

    @classmethod
    def _on_event(cls, name: str, seconds: float, **_) -> None:
        if name.startswith(_COMPILE_EVENTS):
            cls._total += seconds

    @classmethod
    def seconds(cls) -> float:
        return cls._total


def duration(seconds: float) -> str:
    """1h02m03s, 4m05s."""
    if not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Rates and ETA of one run; `phases` are (first step, relative step cost) pairs."""

    def __init__(
        self,
        total_steps: int,
        audio_seconds_per_step: float,
        start_step: int,
        *,
        phases: Sequence[tuple[int, float]] = ((0, 1.0),),
        eval_every: int = 0,
        checkpoint_every: int = 0,
    ):
        CompileClock.start()
        self.total, self.audio_per_step = total_steps, audio_seconds_per_step
        self.phases = sorted(phases)
        self.eval_every, self.checkpoint_every = eval_every, checkpoint_every
        self._rates: dict[int, float] = {}  # phase index -> steps per second of step time
        self._compile_s: dict[int, float] = {}  # phase index -> compile seconds of its step
        self._excluded = {"validation": [], "checkpoint": []}
        self._paused = 0.0
        self._mark(start_step)

    # ---- what the loop reports ---------------------------------------------------------
    @contextlib.contextmanager
    def paused(self, kind: str):
        """Time inside is not step time: a validation or a checkpoint wait (`kind`)."""
        started, compiled = time.perf_counter(), CompileClock.seconds()
        try:
            yield
        finally:
            # Its compilation is already left out through the compile clock; what remains is
            # what the next validation (compiled by then) will cost again.
            own = time.perf_counter() - started - (CompileClock.seconds() - compiled)
            self._excluded[kind].append(own)
            self._paused += own

    def _mark(self, step: int) -> None:
        self._last_step, self._last_time = step, time.perf_counter()
        self._last_compile, self._paused = CompileClock.seconds(), 0.0

    def phase_of(self, step: int) -> int:
        """Index of the phase the step (0-based) belongs to."""
        return max(i for i, (first, _) in enumerate(self.phases) if step >= first)

    # ---- the line ----------------------------------------------------------------------
    def report(self, step: int, metrics: dict) -> dict:
        """Logs the line for `step` (steps done); returns its perf/* scalars."""
        now = time.perf_counter()
        compiled = CompileClock.seconds() - self._last_compile
        steps = step - self._last_step
        phase = self.phase_of(step - 1)
        if compiled > 0 and phase not in self._compile_s:
            self._compile_s[phase] = compiled
        busy = now - self._last_time - compiled - self._paused
        rate = steps / busy if steps > 0 and busy > 1e-6 else float("nan")
        if np.isfinite(rate) and (compiled == 0 or steps > 1):
            self._rates[phase] = rate  # a window that was all compilation says nothing
        self._mark(step)
        eta, partial = self.eta(step)
        losses = " ".join(
            f"{k.split('/', 1)[-1]}={float(v):.4g}"
            for k, v in metrics.items()
            if k.startswith("loss/")
        )
        shown = self._rates.get(phase, float("nan"))
        logging.info(
            "step %d/%d | %s steps/s | %s audio-s/s | %s | ETA %s%s",
            step, self.total, _num(shown), _num(shown * self.audio_per_step, 1), losses,
            duration(eta), " + validation" if partial else "",
        )  # fmt: skip
        perf = {
            "perf/steps_per_second": shown,
            "perf/audio_seconds_per_second": shown * self.audio_per_step,
            "perf/eta_seconds": eta,
        }
        return {k: v for k, v in perf.items() if np.isfinite(v)}  # none before a timed step

    def eta(self, step: int) -> tuple[float, bool]:
        """(seconds left, whether validation's cost is still unknown) after `step` steps."""
        if not self._rates:
            return float("nan"), False
        known_phase = max(self._rates)
        base_rate, base_cost = self._rates[known_phase], self.phases[known_phase][1]
        compiled_phase, first_compile = next(iter(self._compile_s.items()), (0, 0.0))
        compile_per_cost = first_compile / self.phases[compiled_phase][1]
        seconds = 0.0
        for i, (first, cost) in enumerate(self.phases):
            end = self.phases[i + 1][0] if i + 1 < len(self.phases) else self.total
            remaining = max(0, min(end, self.total) - max(first, step))
            if remaining == 0:
                continue
            rate = self._rates.get(i, base_rate * base_cost / cost)
            seconds += remaining / rate
            if i not in self._compile_s:
                seconds += compile_per_cost * cost
        partial = False
        for kind, every in (("validation", self.eval_every), ("checkpoint", self.checkpoint_every)):
            if every <= 0:
                continue
            count = _multiples_after(step, self.total, every)
            past = self._excluded[kind]
            if past:
                seconds += count * float(np.mean(past[-3:]))
            elif kind == "validation" and count:
                partial = True
        return seconds, partial


def _multiples_after(step: int, total: int, every: int) -> int:
    """How many of the steps step+1 .. total are multiples of `every`, or the last one."""
    count = total // every - step // every
    return count + (0 if total % every == 0 or step >= total else 1)


def _num(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "?"
