"""Training logs: TensorBoard events, a metrics JSONL file, and a progress line.

Only process 0 writes; other processes get a writer whose methods do nothing, so callers never
branch on the process index.

Events are tensorboardX's summary protos in TensorBoard's record format, written in the
caller's thread (`EventFile`), so that a flush means that everything logged is in the file:
tensorboardX's own writer queues events for a background thread and its flush() does not wait
for them.

A logdir on object storage (gs://, s3://, any scheme etils.epath knows) works without
TensorFlow: the events and JSONL files are written to a local staging directory and mirrored
to the logdir (f3_jax.storage.DirectoryMirror) when scalars are logged, at most every
`mirror_secs`, and always at flush() and close(). A mirror uploads each changed file whole
(object stores cannot append), so an events file is closed and a new one started once it
reaches `roll_bytes` (TensorBoard reads every events file of a directory, in name order). The
JSONL files of an earlier run in that logdir are downloaded first, so that a resumed run
appends to them. A failed upload is logged and retried at the next mirror.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import tempfile
import time

import jax
import numpy as np
from absl import logging

from f3_jax import storage

METRICS_NAME = "metrics.jsonl"
BATCH_IDS_NAME = "batch_ids.jsonl"


def _default_bins() -> list[float]:
    """tensorboardX's (and TensorFlow's) default histogram bucket limits."""
    v, pos = 1e-12, []
    while v < 1e20:
        pos.append(v)
        v *= 1.1
    return [-b for b in reversed(pos)] + [0.0] + pos


class EventFile:
    """One TensorBoard events file, written synchronously.

    Records: u64 length, u32 masked CRC-32C of it, the serialized Event, u32 masked CRC-32C.
    """

    def __init__(self, directory: str, suffix: str = ""):
        from tensorboardX.proto.event_pb2 import Event

        self._event = Event
        stamp = str(time.time())[:10]  # tensorboardX's naming: events.out.tfevents.<s>.<host>
        self.name = f"events.out.tfevents.{stamp}.{socket.gethostname()}{suffix}"
        self.path = os.path.join(directory, self.name)
        self._file = open(self.path, "wb")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        from tensorboardX.record_writer import masked_crc32c

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)))
        self._file.write(data + struct.pack("<I", masked_crc32c(data)))

    def add(self, summary, step: int) -> None:
        self._write(self._event(summary=summary, wall_time=time.time(), step=int(step)))

    def size(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class SummaryWriter:
    """Scalars, histograms, audio and spectrogram images under one directory."""

    def __init__(
        self,
        logdir: str,
        *,
        enabled: bool | None = None,
        mirror_secs: float = 30.0,
        roll_bytes: int = 32 << 20,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.logdir = logdir
        self.remote = storage.is_remote(logdir)
        self.mirror_secs = mirror_secs
        self.roll_bytes = roll_bytes
        self._events = None
        self._jsonl = None
        self._batch_ids = None
        self._mirror = None
        self._last_mirror = time.monotonic()
        self._num_events_files = 0
        self._bins = None
        self._closed = False
        if self.enabled:
            if self.remote:
                self._local = tempfile.mkdtemp(prefix="f3_jax_summary_")
                self._mirror = storage.DirectoryMirror(self._local, logdir)
                self._download(METRICS_NAME)
            else:
                self._local = logdir
                os.makedirs(logdir, exist_ok=True)
            # The events and metrics files are opened by the first write: a run that fails
            # before it logs anything leaves no empty files behind.

    def _download(self, name: str) -> None:
        """The logdir's `name` (an earlier run's) into the staging directory, to append to."""
        data = storage.read_text(storage.as_path(self.logdir, name))
        if data is not None:
            with open(os.path.join(self._local, name), "w") as f:
                f.write(data)

    def _open_events(self) -> None:
        if not self.remote:
            self._events = EventFile(self._local)
            return
        # Numbered, so that files started within one second sort in order; never the name
        # of an earlier run's file in the logdir (a restart within the same second).
        while True:
            events = EventFile(self._local, f".{self._num_events_files:04d}")
            self._num_events_files += 1
            if not self._exists_remotely(events.name):
                break
            events.close()
            os.remove(events.path)
        self._events = events

    def _exists_remotely(self, name: str) -> bool:
        try:
            return storage.as_path(self.logdir, name).exists()
        except Exception:  # unreachable now: the numbered name is very likely new anyway
            return False

    def _add(self, summary, step: int) -> None:
        if self._events is None:
            self._open_events()
        self._events.add(summary, step)

    def _write_jsonl(self, record: dict) -> None:
        if self._jsonl is None:
            self._jsonl = open(os.path.join(self._local, METRICS_NAME), "a")
        self._jsonl.write(json.dumps(record) + "\n")

    def _flush_files(self) -> None:
        if self._events is not None:
            self._events.flush()
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._batch_ids is not None:
            self._batch_ids.flush()

    def _sync(self, force: bool = False) -> None:
        """Remote logdirs: mirror (every `mirror_secs`, or now when `force`); roll events."""
        if self._mirror is None:
            return
        if not force and time.monotonic() - self._last_mirror < self.mirror_secs:
            return
        self._last_mirror = time.monotonic()
        self._flush_files()
        if not self._upload():
            return
        if self._events is not None and self._events.size() >= self.roll_bytes:
            self._events.close()
            done = self._events
            self._open_events()
            if self._upload():
                self._mirror.forget(done.name)
                os.remove(done.path)  # complete in the logdir; never written again

    def _upload(self) -> bool:
        try:
            self._mirror.sync()
            return True
        except Exception as e:  # any storage backend's errors
            logging.warning(
                "could not mirror the logs in %s to %s (%s: %s); retrying at the next flush",
                self._local,
                self.logdir,
                type(e).__name__,
                e,
            )
            return False

    def scalars(self, step: int, values: dict) -> None:
        from tensorboardX import summary

        if not self.enabled:
            return
        record = {"step": int(step), "wall_time": round(time.time(), 3)}
        for name, value in values.items():
            value = np.asarray(value)
            if value.ndim == 0:
                self._add(summary.scalar(name, float(value)), step)
                record[name] = float(value)
            else:
                if self._bins is None:
                    self._bins = _default_bins()
                values_1d = value.reshape(-1).astype(np.float64)
                self._add(summary.histogram(name, values_1d, self._bins), step)
        self._write_jsonl(record)
        self._flush_files()
        self._sync()

    def batch_ids(self, step: int, ids) -> None:
        """Debug record of the ids of one step's batch (batch_ids.jsonl): shows the data order.

        Appends, so a resumed run adds its steps after those of the run it resumed.
        """
        if not self.enabled:
            return
        if self._batch_ids is None:
            if self.remote:
                self._download(BATCH_IDS_NAME)
            self._batch_ids = open(os.path.join(self._local, BATCH_IDS_NAME), "a")
        self._batch_ids.write(json.dumps({"step": int(step), "ids": [str(i) for i in ids]}) + "\n")
        self._batch_ids.flush()

    def text(self, step: int, name: str, value: str) -> None:
        from tensorboardX import summary

        if self.enabled:
            self._add(summary.text(name, value), step)

    def audio(self, step: int, name: str, wav: np.ndarray, sample_rate: int) -> None:
        from tensorboardX import summary

        if self.enabled:
            wav = np.clip(np.asarray(wav, np.float32).reshape(-1), -1.0, 1.0)
            self._add(summary.audio(name, wav, sample_rate=sample_rate), step)

    def spectrogram(self, step: int, name: str, wavs: dict, sample_rate: int) -> None:
        """One image with a log-mel spectrogram per entry of `wavs` (e.g. original, recon)."""
        from tensorboardX import summary

        if self.enabled:
            image = mel_image(wavs, sample_rate)
            self._add(summary.image(name, image, dataformats="HWC"), step)

    def flush(self) -> None:
        if self.enabled:
            self._flush_files()
            self._sync(force=True)

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._events is not None:
            self._events.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._batch_ids is not None:
            self._batch_ids.close()
        if self._mirror is not None:
            if self._upload():
                shutil.rmtree(self._local, ignore_errors=True)
            else:
                logging.error("the logs for %s stay in %s", self.logdir, self._local)
        self._events = None


def mel_image(wavs: dict, sample_rate: int) -> np.ndarray:
    """Log-mel spectrograms, one row per entry of `wavs` (e.g. original, reconstruction), as an
    RGB uint8 array (H, W, 3): a shared time axis in seconds (a shorter clip is not stretched),
    a frequency axis in Hz, and one colour scale (dB) for all rows, so they compare."""
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_fft, hop, n_mels = 1024, 256, 80
    mels = {
        title: librosa.power_to_db(
            librosa.feature.melspectrogram(
                y=np.asarray(wav, np.float32), sr=sample_rate, n_fft=n_fft, hop_length=hop,
                n_mels=n_mels,
            ),
            ref=1.0,
        )
        for title, wav in wavs.items()
    }  # fmt: skip
    top = max(float(m.max()) for m in mels.values())
    longest = max(m.shape[1] for m in mels.values()) * hop / sample_rate
    freqs = librosa.mel_frequencies(n_mels=n_mels, fmax=sample_rate / 2)
    ticks = [f for f in (0, 500, 1000, 2000, 4000, 8000, 16000) if f <= sample_rate / 2]
    fig, axes = plt.subplots(len(mels), 1, figsize=(8, 2.3 * len(mels)), squeeze=False)
    for ax, (title, mel) in zip(axes[:, 0], mels.items()):
        seconds = mel.shape[1] * hop / sample_rate
        image = ax.imshow(
            mel, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
            extent=(0, seconds, 0, n_mels),
        )  # fmt: skip
        ax.set_xlim(0, longest)
        ax.set_yticks(
            [np.interp(f, freqs, np.arange(n_mels)) for f in ticks], [str(f) for f in ticks]
        )
        ax.set_ylabel("Hz", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("seconds", fontsize=8)
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="dB", fraction=0.03)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    from PIL import Image

    return np.asarray(Image.open(buf).convert("RGB"))
