"""`Tokenizer`: a trained autoencoder as an audio <-> latent codec for users.

    tok = f3_jax.Tokenizer.from_checkpoint("runs/ae_demo")
    z = tok.encode(wav, sample_rate=16000)     # (T, 64) at 50 Hz for the 24 kHz configs
    wav24k = tok.decode(z)                     # (T * hop,) at tok.sample_rate
    tok2 = f3_jax.Tokenizer.from_checkpoint("runs/repr_demo")   # a stage-2 workdir
    r = tok2.represent(wav, sample_rate=16000)  # (T, width) representations at 50 Hz

Long inputs are cut into overlapping windows of a few fixed lengths; each window keeps only
its centre, at least one receptive-field radius away from the window's cut edges, so the
result equals a one-shot pass over the whole input. The windows at the signal's ends are
aligned with those ends, where the one-shot pass sees the same zero padding inside every
convolution (padding the *input* with zeros instead would not be equivalent: biases make
the padded region's activations non-zero). Windows of equal length from all inputs of a call
are batched into one jitted call, so a long input compiles once or twice, not per length.

Files stream: `encode_file`, `decode_file` and `represent_file` (the CLI's) read blocks,
resample them with soxr's streaming resampler, run each window as soon as the samples it needs
have arrived (the same windows as the in-memory pass) and append the kept frames to the output
file, so memory does not grow with duration, except in `represent`: a causal representation
encoder runs chunk by chunk on a KV cache that holds every earlier frame (exact attention needs
them all), a bidirectional one needs the whole sequence at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from f3_jax import checkpoint, storage
from f3_jax.data.audio_io import AudioBlocks, audio_blocks, audio_writer, resample, resample_blocks
from f3_jax.latent_io import LatentFile, removed_on_error, write_latents
from f3_jax.models.autoencoder import Autoencoder, receptive_field


@dataclasses.dataclass(frozen=True)
class Window:
    """A window [start, start + length) of a signal, in frames; its output [keep_start,
    keep_end) (absolute frames) is exact."""

    start: int
    length: int
    keep_start: int
    keep_end: int


def context_frames(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """Frames of context each side of a kept chunk: (encoder, decoder).

    `receptive_field` gives the full span; half of it is the radius. One more frame covers
    what the half does not: the span is not centred exactly on a frame (padding of even
    kernels is asymmetric, and an encoder frame owns `hop` samples, not one).
    """
    enc_span, dec_span = receptive_field(config)
    hop = int(config.model.hop)
    return math.ceil(enc_span / 2 / hop) + 1, math.ceil(dec_span / 2) + 1


def window_lengths(chunk_frames: int, context: int) -> list[int]:
    """Window lengths in frames, largest first: cores chunk_frames, /2, /4, ... >= 2*context.

    Inputs shorter than the largest window use the largest that fits, so that a few shapes
    serve every length, while the overlap overhead stays below 2x.
    """
    lengths, core = [chunk_frames + 2 * context], chunk_frames // 2
    while core >= 2 * context:
        lengths.append(core + 2 * context)
        core //= 2
    return lengths


def plan_windows(total: int, lengths: Sequence[int], context: int) -> list[Window]:
    """Windows whose kept parts tile [0, total) frames exactly once.

    A signal shorter than every window length is one window of its own length (exact, but a
    compile per such length).
    """
    if total == 0:
        return []
    fitting = [n for n in lengths if n <= total]
    if not fitting:
        return [Window(0, total, 0, total)]
    length = max(fitting)
    core = length - 2 * context
    windows = []
    for keep_start in range(0, total, core):
        # Clamp into the signal: the first and last windows sit at the ends, where the
        # convolutions' own zero padding matches the one-shot pass.
        start = min(max(keep_start - context, 0), total - length)
        windows.append(Window(start, length, keep_start, min(keep_start + core, total)))
    return windows


def ready_windows(
    available: int, final: bool, lengths: Sequence[int], context: int, next_keep: int
) -> list[Window]:
    """The windows of `plan_windows(total, ...)` keeping frames from `next_keep` on that are
    known once `available` frames have arrived; all of them when `final` (total = available).

    A window clear of the signal's end is the same for every total past it; and once the
    largest length has arrived, the plan uses the largest length.
    """
    if final:
        return [w for w in plan_windows(available, lengths, context) if w.keep_start >= next_keep]
    length = lengths[0]
    core = length - 2 * context
    windows = []
    keep_start = next_keep
    while max(keep_start - context, 0) + length <= available:
        windows.append(Window(max(keep_start - context, 0), length, keep_start, keep_start + core))
        keep_start += core
    return windows


def _batch_size(n: int, limit: int) -> int:
    """n rounded up to a power of two, at most `limit`: few batch shapes, little padding."""
    return min(limit, 1 << max(n - 1, 0).bit_length())


def _as_list(x, item_ndim: int) -> tuple[list[np.ndarray], str]:
    """(signals, kind): kind "single" (one item), "stacked" (an array of items) or "list"."""
    if isinstance(x, np.ndarray | jax.Array):
        if x.ndim == item_ndim:
            return [np.asarray(x, np.float32)], "single"
        if x.ndim == item_ndim + 1:
            return [np.asarray(s, np.float32) for s in x], "stacked"
        raise ValueError(f"expected {item_ndim} or {item_ndim + 1} dims, got shape {x.shape}")
    items = [np.asarray(s, np.float32) for s in x]
    for s in items:
        if s.ndim != item_ndim:
            raise ValueError(f"expected items of {item_ndim} dims, got shape {s.shape}")
    return items, "list"


def _restore(out: list[np.ndarray], kind: str):
    if kind == "single":
        return out[0]
    return np.stack(out) if kind == "stacked" else out


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
        self.enc_lengths = window_lengths(chunk_frames, self.enc_context)
        self.dec_lengths = window_lengths(chunk_frames, self.dec_context)
        self.batch_windows = batch_windows
        self.repr_chunk_frames = repr_chunk_frames
        self._encode = jax.jit(
            lambda v, x: self.model.apply(v, x, train=False, method=Autoencoder.encode)["z"]
        )
        # Frames on an axis of their own: (B, T * hop) -> (B, T, hop), like encode's (B, T, D).
        self.representation_config = None
        if representation is not None:
            self._init_representation(*representation)
        self._decode = jax.jit(
            lambda v, z: self.model.apply(v, z, method=Autoencoder.decode).reshape(
                z.shape[0], z.shape[1], self.hop
            )
        )

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None, **kwargs) -> Tokenizer:
        """From WORKDIR/export when it holds `step` (default: any), else from the Orbax
        checkpoint `step` (default: the latest), using its EMA weights when it has them.

        A stage-2 workdir gives a tokenizer that also has `represent`: its export holds the
        representation encoder and a copy of the frozen autoencoder it was trained on.
        `workdir` may be a gs:// (or other etils.epath) URL.
        """
        export = os.path.join(workdir, checkpoint.EXPORT_DIR)
        if storage.as_path(export, "config.json").exists():
            variables, config, export_step = checkpoint.read_export(export)
            if config.stage == "representation":
                if step is not None and step != export_step:
                    raise FileNotFoundError(
                        f"{export} holds step {export_step}, not {step} (stage-2 tokenizers "
                        "load exports only)"
                    )
                ae_vars, ae_config, _ = checkpoint.read_export(os.path.join(export, "autoencoder"))
                return cls(ae_config, ae_vars, representation=(config, variables), **kwargs)
            if step is None or step == export_step:
                return cls(config, variables, **kwargs)
        config, variables = _from_orbax(workdir, step)
        return cls(config, variables, **kwargs)

    def _init_representation(self, config: ml_collections.ConfigDict, variables: dict) -> None:
        from f3_jax.models.representation import RepresentationEncoder

        self.representation_config = config
        encoder = RepresentationEncoder.from_config(config)
        self._repr_encoder = encoder
        self.representation_width = encoder.width
        self._repr_params = jax.tree.map(jnp.asarray, variables["params"]["encoder"])
        self._represent = jax.jit(
            lambda p, z, m: encoder.apply({"params": p}, z, m)["repr"].astype(jnp.float32)
        )

        def step(p, z, m, cache):
            out = encoder.apply({"params": p}, z, m, cache)
            return out["repr"].astype(jnp.float32), out["cache"]

        # The cache is donated: each step updates it in place instead of copying it.
        self._represent_step = jax.jit(step, donate_argnums=3)

    # ---- windows ------------------------------------------------------------------------

    def _apply(self, fn: Callable, pieces: list[np.ndarray]) -> np.ndarray:
        """`fn` over windows of one length in one batch, padded to a power of two of rows:
        (n, W, *frame_shape)."""
        x = np.zeros((_batch_size(len(pieces), self.batch_windows), *pieces[0].shape), np.float32)
        for row, piece in enumerate(pieces):
            x[row] = piece
        return np.asarray(fn(self.variables, jnp.asarray(x)), np.float32)[: len(pieces)]

    def _run(
        self,
        fn: Callable,
        signals: list[np.ndarray],
        unit: int,
        lengths: Sequence[int],
        context: int,
        frame_shape: tuple[int, ...],
    ) -> list[np.ndarray]:
        """Applies `fn` ((B, W * unit) -> (B, W, *frame_shape)) to every signal in windows.

        `unit`: input samples (or latent rows) per frame. Returns (frames, *frame_shape) each.
        """
        results = [np.zeros((len(s) // unit, *frame_shape), np.float32) for s in signals]
        by_length: dict[int, list[tuple[int, Window]]] = {}
        for i, sig in enumerate(signals):
            for w in plan_windows(len(sig) // unit, lengths, context):
                by_length.setdefault(w.length, []).append((i, w))
        for length, jobs in by_length.items():
            for k in range(0, len(jobs), self.batch_windows):
                part = jobs[k : k + self.batch_windows]
                y = self._apply(
                    fn, [signals[i][w.start * unit : (w.start + length) * unit] for i, w in part]
                )
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
        lengths: Sequence[int],
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
            windows = ready_windows(available, final, lengths, context, next_keep)
            if not final:  # full batches only: the in-memory pass's shapes, fewer calls
                windows = windows[: len(windows) - len(windows) % self.batch_windows]
            for k in range(0, len(windows), self.batch_windows):
                part = windows[k : k + self.batch_windows]
                pieces = [
                    buf[(w.start - base) * unit : (w.start + w.length - base) * unit] for w in part
                ]
                for row, w in zip(self._apply(fn, pieces), part):
                    yield row[w.keep_start - w.start : w.keep_end - w.start]
                next_keep = part[-1].keep_end
            # Later windows start at next_keep - context at the earliest, or, the last one,
            # clamped to the end: at most the largest length before it.
            drop = max(0, min(next_keep - context, available - lengths[0]) - base)
            buf, base = buf[drop * unit :], base + drop

    # ---- in memory ----------------------------------------------------------------------

    def encode(self, wav, sample_rate: int | None = None):
        """Audio -> latents: (L,) -> (T, D); (B, L) -> (B, T, D); list of (L_i,) -> list.

        Audio at `sample_rate` (default: the model's) is resampled with soxr, then padded
        with zeros to a multiple of hop: T = ceil(L' / hop) for L' resampled samples.
        """
        signals, kind = _as_list(wav, 1)
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        signals = [resample(s, rate, self.sample_rate) for s in signals]
        signals = [np.pad(s, (0, (-len(s)) % self.hop)) for s in signals]
        out = self._run(
            self._encode,
            signals,
            self.hop,
            self.enc_lengths,
            self.enc_context,
            (self.latent_dim,),
        )
        return _restore(out, kind)

    def decode(self, latents):
        """Latents -> audio at `sample_rate`: (T, D) -> (T * hop,); (B, T, D) -> (B, T * hop);
        list of (T_i, D) -> list. Always whole frames: trim to the original length yourself."""
        signals, kind = _as_list(latents, 2)
        for z in signals:
            self._check_width(z)
        out = self._run(self._decode, signals, 1, self.dec_lengths, self.dec_context, (self.hop,))
        return _restore([o.reshape(-1) for o in out], kind)

    def _check_width(self, z: np.ndarray) -> None:
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"latents of width {z.shape[-1]}, expected {self.latent_dim}")

    def represent(self, wav, sample_rate: int | None = None):
        """Audio -> stage-2 representations at the latent frame rate: (L,) -> (T, width);
        (B, L) -> (B, T, width); list -> list. T as for `encode`."""
        self._require_representation()
        latents, kind = _as_list(self.encode(wav, sample_rate), 2)
        if not self._repr_encoder.causal:
            return _restore(self._represent_whole(latents), kind)
        # Chunk by chunk on the KV cache: equal to the whole pass (causal attention never
        # looks ahead), with chunk x T attention scores instead of T x T.
        c = self.repr_chunk_frames
        frames = _round_up(max(max(len(z) for z in latents), 1), c)
        z = np.zeros((len(latents), frames, self.latent_dim), np.float32)
        mask = np.zeros((len(latents), frames), np.float32)
        for i, lat in enumerate(latents):
            z[i, : len(lat)], mask[i, : len(lat)] = lat, 1.0
        chunks = ((z[:, k : k + c], mask[:, k : k + c]) for k in range(0, frames, c))
        r = np.concatenate([r for r, _ in self._cached_steps(chunks, frames)], axis=1)
        return _restore([r[i, : len(lat)] for i, lat in enumerate(latents)], kind)

    def _require_representation(self) -> None:
        if self.representation_config is None:
            raise ValueError("this tokenizer has no representation encoder: load a stage-2 workdir")

    def _represent_whole(self, latents: list[np.ndarray]) -> list[np.ndarray]:
        """One pass over whole sequences (a bidirectional encoder needs it)."""
        # Padded to whole seconds so that few shapes compile; the mask hides the padding.
        unit = max(1, self.sample_rate // self.hop)
        frames = max(len(z) for z in latents)
        frames += (-frames) % unit
        z = np.zeros((len(latents), frames, self.latent_dim), np.float32)
        mask = np.zeros((len(latents), frames), np.float32)
        for i, lat in enumerate(latents):
            z[i, : len(lat)], mask[i, : len(lat)] = lat, 1.0
        r = np.asarray(self._represent(self._repr_params, jnp.asarray(z), jnp.asarray(mask)))
        return [r[i, : len(lat)] for i, lat in enumerate(latents)]

    def _cached_steps(
        self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], capacity: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(B, C, D) latents and (B, C) masks, chunk after chunk, through the causal encoder
        on its KV cache -> ((B, C, width) representations, the mask) each.

        The cache holds `capacity` frames (a multiple of C), doubled when full: each size
        compiles once.
        """
        cache, used = None, 0
        for z, mask in chunks:
            if cache is None:
                cache = self._new_cache(len(z), capacity)
            if used + z.shape[1] > capacity:
                capacity *= 2
                cache = _grow_cache(cache, capacity)
            r, cache = self._represent_step(
                self._repr_params, jnp.asarray(z), jnp.asarray(mask), cache
            )
            used += z.shape[1]
            yield np.asarray(r), mask

    def _new_cache(self, batch: int, capacity: int) -> dict:
        # Zeros of their own for every leaf: init_cache may give k and v one shared array,
        # and a donated tree must not hold a buffer twice.
        shapes = jax.eval_shape(lambda: self._repr_encoder.init_cache(batch, capacity))
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    # ---- streams ------------------------------------------------------------------------

    def encode_stream(
        self, blocks: Iterable[np.ndarray], sample_rate: int | None = None
    ) -> Iterator[np.ndarray]:
        """Consecutive 1-D blocks of one signal -> consecutive (n, D) blocks of its latents,
        equal to `encode` of the whole signal, in memory that does not grow with its length."""
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        samples = _pad_to_multiple(resample_blocks(blocks, rate, self.sample_rate), self.hop)
        return self._stream(self._encode, samples, self.hop, self.enc_lengths, self.enc_context)

    def decode_stream(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Consecutive (n, D) blocks of latents -> consecutive 1-D blocks of audio, equal to
        `decode` of the whole sequence, in memory that does not grow with its length."""

        def checked() -> Iterator[np.ndarray]:
            for z in blocks:
                self._check_width(z)
                yield z

        for frames in self._stream(self._decode, checked(), 1, self.dec_lengths, self.dec_context):
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
        cache that keeps every frame so far (depth x 2 x kv_heads x head_dim numbers each),
        sized for `max_frames` when given (one compile), else doubled as it fills. A
        bidirectional encoder attends over the whole sequence: its latents are gathered
        first, and its attention scores grow with the length squared.
        """
        self._require_representation()
        latents = self.encode_stream(blocks, sample_rate)
        if not self._repr_encoder.causal:
            whole = np.concatenate([np.zeros((0, self.latent_dim), np.float32), *latents])
            yield self._represent_whole([whole])[0]
            return
        c = self.repr_chunk_frames
        capacity = 8 * c if max_frames is None else _round_up(max(max_frames, 1), c)
        chunks = (
            (z[None], (np.arange(c) < n).astype(np.float32)[None])
            for z, n in _rechunk(latents, c, self.latent_dim)
        )
        for r, mask in self._cached_steps(chunks, capacity):
            yield r[0, : int(mask.sum())]

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
        self._require_representation()
        audio = src if isinstance(src, AudioBlocks) else audio_blocks(src)
        # A bound on T (soxr gives about frames * ratio samples): one cache size, one compile.
        max_frames = math.ceil((audio.frames * self.sample_rate / audio.sample_rate + 2) / self.hop)
        stream = self.represent_stream(audio.blocks, audio.sample_rate, max_frames)
        return write_latents(dst, stream, self.representation_width)

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


def _round_up(n: int, multiple: int) -> int:
    return n + (-n) % multiple


def _pad_to_multiple(blocks: Iterable[np.ndarray], multiple: int) -> Iterator[np.ndarray]:
    """The blocks, then zeros up to a whole multiple of samples (encode's padding)."""
    count = 0
    for block in blocks:
        count += len(block)
        yield block
    if count % multiple:
        yield np.zeros(-count % multiple, np.float32)


def _rechunk(
    blocks: Iterable[np.ndarray], size: int, width: int
) -> Iterator[tuple[np.ndarray, int]]:
    """Consecutive (n, width) blocks -> (size, width) chunks, the last zero-padded, each with
    its count of real rows."""
    buf = np.zeros((0, width), np.float32)
    for block in blocks:
        buf = np.concatenate([buf, block])
        while len(buf) >= size:
            yield buf[:size], size
            buf = buf[size:]
    if len(buf):
        yield np.pad(buf, ((0, size - len(buf)), (0, 0))), len(buf)


def _grow_cache(cache: dict, capacity: int) -> dict:
    """The KV cache with room for `capacity` frames: empty, invalid slots appended."""

    def pad(x: jax.Array, axis: int) -> jax.Array:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, capacity - x.shape[axis])
        return jnp.pad(x, widths)

    # k, v: (B, slots, kv_heads, head_dim) per layer, or stacked over the layers in front.
    grow = lambda kv: jax.tree.map(lambda x: pad(x, x.ndim - 3), kv)
    return {**cache, "k": grow(cache["k"]), "v": grow(cache["v"]), "valid": pad(cache["valid"], 1)}


def _from_orbax(workdir: str, step: int | None) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, variables) of a stage-1 training checkpoint: EMA weights when saved."""
    if not storage.as_path(workdir, "checkpoints").is_dir():
        # Checked first: the Checkpointer would create an empty directory there.
        raise FileNotFoundError(f"no {checkpoint.EXPORT_DIR}/ and no checkpoints/ in {workdir}")
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
        config = ml_collections.ConfigDict(ckpt.saved_config(step)["config"])
        gen = ckpt.restore_raw(step)["gen"]
    finally:
        ckpt.close()
    variables = {"params": gen.get("ema", gen["params"])}
    if "batch_stats" in gen:
        variables["batch_stats"] = gen["batch_stats"]
    return config, variables
