"""`Tokenizer`: a trained autoencoder as an audio <-> latent codec for users.

    tok = f3_jax.Tokenizer.from_checkpoint("runs/ae_demo")
    z = tok.encode(wav, sample_rate=16000)     # (T, 64) at 50 Hz for the 24 kHz configs
    wav24k = tok.decode(z)                     # (T * hop,) at tok.sample_rate
    tok2 = f3_jax.Tokenizer.from_checkpoint("runs/repr_demo")   # a stage-2 workdir
    r = tok2.represent(wav, sample_rate=16000)  # (T, width) representations at 50 Hz

Inputs of any length run in overlapping windows whose kept parts tile the signal, so the
result equals a one-shot pass (f3_jax/inference/windows.py); windows of equal length from all
inputs of a call are batched into one jitted call, so a long input compiles once or twice.

Files stream: `encode_file`, `decode_file` and `represent_file` (the CLI's) read blocks,
resample them with soxr's streaming resampler, run each window as soon as the samples it needs
have arrived (the same windows as the in-memory pass) and append the kept frames to the output
file, so memory does not grow with duration, except in `represent`
(f3_jax/inference/representer.py).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from f3_jax import exports
from f3_jax.data.audio_io import AudioBlocks, audio_blocks, audio_writer, resample, resample_blocks
from f3_jax.data.latent_io import LatentFile, removed_on_error, write_latents
from f3_jax.inference.representer import Representer
from f3_jax.inference.windows import (
    Window,
    as_list,
    batch_size,
    context_frames,
    pad_to_multiple,
    plan_windows,
    ready_windows,
    restore,
    window_length,
)
from f3_jax.models.autoencoder import Autoencoder


class Tokenizer:
    """Encode audio to normalized latents and decode latents to audio, batched and jitted.

    `chunk_frames`: latent frames kept per window (memory vs overlap overhead);
    `batch_windows`: windows per jitted call at most; `repr_chunk_frames`: frames per step of
    a causal representation encoder (its attention scores: chunk x frames so far).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        variables: dict,
        *,
        chunk_frames: int = 500,
        batch_windows: int = 8,
        repr_chunk_frames: int = 256,
        representation: tuple[ml_collections.ConfigDict, dict] | None = None,
    ):
        self.config = config
        self.sample_rate = int(config.sample_rate)
        self.hop = int(config.model.hop)
        self.latent_dim = int(config.model.latent_dim)
        self.model = Autoencoder.from_config(config)
        self.variables = jax.tree.map(jnp.asarray, nn.meta.unbox(variables))
        self.enc_context, self.dec_context = context_frames(config)
        self.enc_length = window_length(chunk_frames, self.enc_context)
        self.dec_length = window_length(chunk_frames, self.dec_context)
        self.batch_windows = batch_windows
        # valid: (B,) frames of signal per window, the rest zero padding (windows.py).
        self._encode = jax.jit(
            lambda v, x, valid: self.model.apply(
                v, x, train=False, valid=valid * self.hop, method=Autoencoder.encode
            )["z"]
        )
        # Frames on an axis of their own: (B, T * hop) -> (B, T, hop), like encode's (B, T, D).
        self._decode = jax.jit(
            lambda v, z, valid: self.model.apply(v, z, valid, method=Autoencoder.decode).reshape(
                z.shape[0], z.shape[1], self.hop
            )
        )
        self.representer = None
        if representation is not None:
            self.representer = Representer(*representation, chunk_frames=repr_chunk_frames)

    @property
    def representation_config(self) -> ml_collections.ConfigDict | None:
        return None if self.representer is None else self.representer.config

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None, **kwargs) -> Tokenizer:
        """From WORKDIR/export when it holds `step` (default: any), else from the checkpoint
        `step` (default: the latest) (`exports.read_inference`: an unreadable export falls
        back to the checkpoint, with a warning).

        A stage-2 workdir gives a tokenizer that also has `represent`: its export holds the
        representation encoder and a copy of the frozen autoencoder it was trained on.
        `workdir` may be a gs:// (or other etils.epath) URL.
        """
        variables, config, _ = exports.read_inference(
            workdir, step, stage_name="stage 1 or stage 2"
        )
        if config.stage == "representation":
            copy = os.path.join(workdir, exports.EXPORT_DIR, "autoencoder")
            ae_vars, ae_config, _ = exports.read(copy)
            return cls(ae_config, ae_vars, representation=(config, variables), **kwargs)
        return cls(config, variables, **kwargs)

    # ---- windows ------------------------------------------------------------------------

    def _apply(self, fn: Callable, pieces: list[np.ndarray], length: int, unit: int) -> np.ndarray:
        """`fn` over windows of `length` frames (pieces: their signal, padded here with zeros)
        in one batch, padded to a power of two of rows: (n, length, *frame_shape)."""
        rows = batch_size(len(pieces), self.batch_windows)
        x = np.zeros((rows, length * unit, *pieces[0].shape[1:]), np.float32)
        valid = np.zeros(rows, np.int32)
        for row, piece in enumerate(pieces):
            x[row, : len(piece)] = piece
            valid[row] = len(piece) // unit
        out = fn(self.variables, jnp.asarray(x), jnp.asarray(valid))
        return np.asarray(out, np.float32)[: len(pieces)]

    def _run(
        self,
        fn: Callable,
        signals: list[np.ndarray],
        unit: int,
        length: int,
        context: int,
        frame_shape: tuple[int, ...],
    ) -> list[np.ndarray]:
        """Applies `fn` ((B, W * unit) -> (B, W, *frame_shape)) to every signal in windows.

        `unit`: input samples (or latent rows) per frame. Returns (frames, *frame_shape) each.
        """
        results = [np.zeros((len(s) // unit, *frame_shape), np.float32) for s in signals]
        by_length: dict[int, list[tuple[int, Window]]] = {}
        for i, sig in enumerate(signals):
            for w in plan_windows(len(sig) // unit, length, context):
                by_length.setdefault(w.length, []).append((i, w))
        for padded, jobs in by_length.items():
            for k in range(0, len(jobs), self.batch_windows):
                part = jobs[k : k + self.batch_windows]
                pieces = [signals[i][w.start * unit : (w.start + w.valid) * unit] for i, w in part]
                y = self._apply(fn, pieces, padded, unit)
                for row, (i, w) in zip(y, part):
                    results[i][w.keep_start : w.keep_end] = row[
                        w.keep_start - w.start : w.keep_end - w.start
                    ]
        return results

    def _stream(
        self,
        fn: Callable,
        blocks: Iterable[np.ndarray],
        unit: int,
        length: int,
        context: int,
    ) -> Iterator[np.ndarray]:
        """`_run` over one signal that arrives in blocks: yields its kept output frames in
        order, running windows (the same as `_run`'s) in full batches as their input arrives.

        Holds about `batch_windows` windows of input: what no later window reads is dropped.
        A tail shorter than `unit` is ignored: pad the signal to whole frames.
        """
        buf, base, next_keep = None, 0, 0  # buf: the signal from frame `base` on
        for block in itertools.chain(blocks, [None]):
            final = block is None
            if not final:
                block = np.asarray(block, np.float32)
                buf = block if buf is None else np.concatenate([buf, block])
            if buf is None:
                return
            available = base + len(buf) // unit
            windows = ready_windows(available, final, length, context, next_keep)
            if not final:  # full batches only: the in-memory pass's shapes, fewer calls
                windows = windows[: len(windows) - len(windows) % self.batch_windows]
            for k in range(0, len(windows), self.batch_windows):
                part = windows[k : k + self.batch_windows]
                pieces = [
                    buf[(w.start - base) * unit : (w.start + w.valid - base) * unit] for w in part
                ]
                for row, w in zip(self._apply(fn, pieces, part[0].length, unit), part):
                    yield row[w.keep_start - w.start : w.keep_end - w.start]
                next_keep = part[-1].keep_end
            # Later windows start at next_keep - context at the earliest, or, the last one,
            # clamped to the end: at most the largest length before it.
            drop = max(0, min(next_keep - context, available - length) - base)
            buf, base = buf[drop * unit :], base + drop

    # ---- in memory ----------------------------------------------------------------------

    def encode(self, wav, sample_rate: int | None = None):
        """Audio -> latents: (L,) -> (T, D); (B, L) -> (B, T, D); list of (L_i,) -> list.

        Audio at `sample_rate` (default: the model's) is resampled with soxr, then padded
        with zeros to a multiple of hop: T = ceil(L' / hop) for L' resampled samples.
        """
        signals, kind = as_list(wav, 1)
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        signals = [resample(s, rate, self.sample_rate) for s in signals]
        signals = [np.pad(s, (0, (-len(s)) % self.hop)) for s in signals]
        out = self._run(
            self._encode,
            signals,
            self.hop,
            self.enc_length,
            self.enc_context,
            (self.latent_dim,),
        )
        return restore(out, kind)

    def decode(self, latents):
        """Latents -> audio at `sample_rate`: (T, D) -> (T * hop,); (B, T, D) -> (B, T * hop);
        list of (T_i, D) -> list. Always whole frames: trim to the original length yourself."""
        signals, kind = as_list(latents, 2)
        for z in signals:
            self._check_width(z)
        out = self._run(self._decode, signals, 1, self.dec_length, self.dec_context, (self.hop,))
        return restore([o.reshape(-1) for o in out], kind)

    def _check_width(self, z: np.ndarray) -> None:
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"latents of width {z.shape[-1]}, expected {self.latent_dim}")

    def represent(self, wav, sample_rate: int | None = None):
        """Audio -> stage-2 representations at the latent frame rate: (L,) -> (T, width);
        (B, L) -> (B, T, width); list -> list. T as for `encode`."""
        representer = self._representer_or_error()
        latents, kind = as_list(self.encode(wav, sample_rate), 2)
        return restore(representer.represent(latents, self.frames_per_second), kind)

    @property
    def frames_per_second(self) -> int:
        return self.sample_rate // self.hop

    def _representer_or_error(self) -> Representer:
        if self.representer is None:
            raise ValueError("this tokenizer has no representation encoder: load a stage-2 workdir")
        return self.representer

    # ---- streams ------------------------------------------------------------------------

    def encode_stream(
        self, blocks: Iterable[np.ndarray], sample_rate: int | None = None
    ) -> Iterator[np.ndarray]:
        """Consecutive 1-D blocks of one signal -> consecutive (n, D) blocks of its latents,
        equal to `encode` of the whole signal, in memory that does not grow with its length."""
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        samples = pad_to_multiple(resample_blocks(blocks, rate, self.sample_rate), self.hop)
        return self._stream(self._encode, samples, self.hop, self.enc_length, self.enc_context)

    def decode_stream(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Consecutive (n, D) blocks of latents -> consecutive 1-D blocks of audio, equal to
        `decode` of the whole sequence, in memory that does not grow with its length."""

        def checked() -> Iterator[np.ndarray]:
            for z in blocks:
                self._check_width(z)
                yield z

        for frames in self._stream(self._decode, checked(), 1, self.dec_length, self.dec_context):
            yield frames.reshape(-1)

    def represent_stream(
        self,
        blocks: Iterable[np.ndarray],
        sample_rate: int | None = None,
        max_frames: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Consecutive 1-D audio blocks -> consecutive (n, width) blocks of representations,
        equal to `represent` of the whole signal.

        Not bounded by a window: a causal encoder runs `repr_chunk_frames` at a time on a KV
        cache that keeps every frame so far, sized for `max_frames` when given (one compile),
        else doubled as it fills. A bidirectional encoder attends over the whole sequence.
        """
        representer = self._representer_or_error()
        latents = self.encode_stream(blocks, sample_rate)
        capacity = 8 * representer.chunk_frames if max_frames is None else max_frames
        yield from representer.stream(latents, self.latent_dim, capacity, self.frames_per_second)

    # ---- files --------------------------------------------------------------------------

    def encode_file(
        self, src: str | os.PathLike | AudioBlocks, dst: str | os.PathLike
    ) -> tuple[int, int]:
        """Audio file -> (T, D) float32 .npy of latents, streamed; returns (T, D).

        `src`: a path, or the file already opened by `audio_io.audio_blocks` (to check it
        before loading a model). Raises AudioDecodeError, before writing anything, for a file
        that cannot be decoded or is empty; for NaN/Inf samples, removing the partial output.
        """
        audio = src if isinstance(src, AudioBlocks) else audio_blocks(src)
        return write_latents(
            dst, self.encode_stream(audio.blocks, audio.sample_rate), self.latent_dim
        )

    def represent_file(
        self, src: str | os.PathLike | AudioBlocks, dst: str | os.PathLike
    ) -> tuple[int, int]:
        """Audio file -> (T, width) float32 .npy of representations, as `encode_file`; see
        `represent_stream` for what grows with the duration. Returns (T, width)."""
        representer = self._representer_or_error()
        audio = src if isinstance(src, AudioBlocks) else audio_blocks(src)
        # A bound on T (soxr gives about frames * ratio samples): one cache size, one compile.
        max_frames = math.ceil((audio.frames * self.sample_rate / audio.sample_rate + 2) / self.hop)
        stream = self.represent_stream(audio.blocks, audio.sample_rate, max_frames)
        return write_latents(dst, stream, representer.width)

    def decode_file(self, src: str | os.PathLike | LatentFile, dst: str | os.PathLike) -> int:
        """(T, D) .npy of latents -> audio file at `sample_rate` (16-bit PCM for .wav and
        .flac, else the suffix's default format), streamed; returns T * hop, the samples written.

        `src`: a path or an opened `LatentFile`. Raises DataError, before writing anything, for
        a file that is not a .npy of finite (T >= 1, D) floats.
        """
        latents = src if isinstance(src, LatentFile) else LatentFile(src)
        latents.check_width(self.latent_dim)
        samples, out = 0, audio_writer(dst, self.sample_rate)
        with removed_on_error(dst), out:
            for wav in self.decode_stream(latents.blocks()):
                out.write(np.clip(wav, -1.0, 1.0))
                samples += len(wav)
        return samples
