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
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from f3_jax import checkpoint, storage
from f3_jax.data.audio_io import resample
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
    `batch_windows`: windows per jitted call at most.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        variables: dict,
        *,
        chunk_frames: int = 500,
        batch_windows: int = 8,
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
        self.representation_width = encoder.width
        self._repr_params = jax.tree.map(jnp.asarray, variables["params"]["encoder"])
        self._represent = jax.jit(
            lambda p, z, m: encoder.apply({"params": p}, z, m)["repr"].astype(jnp.float32)
        )

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
                x = np.zeros(
                    (_batch_size(len(part), self.batch_windows), length * unit)
                    + signals[part[0][0]].shape[1:],
                    np.float32,
                )
                for row, (i, w) in enumerate(part):
                    x[row] = signals[i][w.start * unit : (w.start + length) * unit]
                y = np.asarray(fn(self.variables, jnp.asarray(x)), np.float32)
                for row, (i, w) in enumerate(part):
                    offset = w.start
                    results[i][w.keep_start : w.keep_end] = y[
                        row, w.keep_start - offset : w.keep_end - offset
                    ]
        return results

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
            if z.shape[-1] != self.latent_dim:
                raise ValueError(f"latents of width {z.shape[-1]}, expected {self.latent_dim}")
        out = self._run(self._decode, signals, 1, self.dec_lengths, self.dec_context, (self.hop,))
        return _restore([o.reshape(-1) for o in out], kind)

    def represent(self, wav, sample_rate: int | None = None):
        """Audio -> stage-2 representations at the latent frame rate: (L,) -> (T, width);
        (B, L) -> (B, T, width); list -> list. T as for `encode`."""
        if self.representation_config is None:
            raise ValueError("this tokenizer has no representation encoder: load a stage-2 workdir")
        latents, kind = _as_list(self.encode(wav, sample_rate), 2)
        # Padded to whole seconds so that few shapes compile; the mask hides the padding.
        unit = max(1, self.sample_rate // self.hop)
        frames = max(len(z) for z in latents)
        frames += (-frames) % unit
        z = np.zeros((len(latents), frames, self.latent_dim), np.float32)
        mask = np.zeros((len(latents), frames), np.float32)
        for i, lat in enumerate(latents):
            z[i, : len(lat)], mask[i, : len(lat)] = lat, 1.0
        r = np.asarray(self._represent(self._repr_params, jnp.asarray(z), jnp.asarray(mask)))
        return _restore([r[i, : len(lat)] for i, lat in enumerate(latents)], kind)


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
