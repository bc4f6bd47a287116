"""Training logs: TensorBoard events (tensorboardX), a metrics JSONL file, and a progress line.

Only process 0 writes; other processes get a writer whose methods do nothing, so callers never
branch on the process index.
"""

from __future__ import annotations

import io
import json
import os
import time

import jax
import numpy as np
from absl import logging


class SummaryWriter:
    """Scalars, histograms, audio and spectrogram images under one directory."""

    def __init__(self, logdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.logdir = logdir
        self._tb = None
        self._jsonl = None
        self._batch_ids = None
        if self.enabled:
            from tensorboardX import SummaryWriter as TBWriter

            os.makedirs(logdir, exist_ok=True)
            self._tb = TBWriter(logdir, flush_secs=30)
            self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        for name, value in values.items():
            value = np.asarray(value)
            if value.ndim == 0:
                self._tb.add_scalar(name, float(value), step)
                record[name] = float(value)
            else:
                self._tb.add_histogram(name, value.reshape(-1), step)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def batch_ids(self, step: int, ids) -> None:
        """Debug record of the ids of one step's batch (batch_ids.jsonl): shows the data order.

        Appends, so a resumed run adds its steps after those of the run it resumed.
        """
        if not self.enabled:
            return
        if self._batch_ids is None:
            self._batch_ids = open(os.path.join(self.logdir, "batch_ids.jsonl"), "a")
        self._batch_ids.write(json.dumps({"step": int(step), "ids": [str(i) for i in ids]}) + "\n")
        self._batch_ids.flush()

    def text(self, step: int, name: str, value: str) -> None:
        if self.enabled:
            self._tb.add_text(name, value, step)

    def audio(self, step: int, name: str, wav: np.ndarray, sample_rate: int) -> None:
        if self.enabled:
            wav = np.clip(np.asarray(wav, np.float32).reshape(-1), -1.0, 1.0)
            self._tb.add_audio(name, wav, step, sample_rate=sample_rate)

    def spectrogram(self, step: int, name: str, wavs: dict, sample_rate: int) -> None:
        """One image with a log-mel spectrogram per entry of `wavs` (e.g. original, recon)."""
        if self.enabled:
            self._tb.add_image(name, mel_image(wavs, sample_rate), step, dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            if self._batch_ids is not None:
                self._batch_ids.close()


def mel_image(wavs: dict, sample_rate: int) -> np.ndarray:
    """Stacked log-mel spectrograms as an RGB uint8 array (H, W, 3)."""
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(wavs), 1, figsize=(8, 2.2 * len(wavs)), squeeze=False)
    for ax, (title, wav) in zip(axes[:, 0], wavs.items()):
        mel = librosa.feature.melspectrogram(
            y=np.asarray(wav, np.float32), sr=sample_rate, n_fft=1024, hop_length=256, n_mels=80
        )
        ax.imshow(np.log(mel + 1e-5), origin="lower", aspect="auto", cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    buf.seek(0)
    from PIL import Image

    return np.asarray(Image.open(buf).convert("RGB"))


class Progress:
    """The one-line report: step, steps/s, audio-seconds/s and ETA."""

    def __init__(self, total_steps: int, audio_seconds_per_step: float, start_step: int):
        self.total = total_steps
        self.audio_per_step = audio_seconds_per_step
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def report(self, step: int, metrics: dict) -> dict:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        shown = " ".join(
            f"{k.split('/')[-1]}={float(v):.4g}"
            for k, v in metrics.items()
            if k.startswith("loss/")
        )
        logging.info(
            "step %d/%d | %.2f steps/s | %.1f audio-s/s | %s | ETA %s",
            step,
            self.total,
            rate,
            rate * self.audio_per_step,
            shown,
            _duration(eta),
        )
        return {
            "perf/steps_per_second": rate,
            "perf/audio_seconds_per_second": rate * self.audio_per_step,
        }


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
