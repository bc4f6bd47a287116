"""`Tokenizer`: a trained autoencoder as an audio <-> latent codec for users.

    tok = f3_jax.Tokenizer.from_checkpoint("runs/ae_demo")
    z = tok.encode(wav, sample_rate=16000)     # (T, 64) at 50 Hz for the 24 kHz configs
    wav24k = tok.decode(z)

Inputs of any length are cut into fixed-size windows that overlap by more than the receptive
field; each window is computed in one jitted, batched call and only its centre is kept, so the
result equals a one-shot pass (windows at the ends are aligned with the signal's ends, where
one-shot processing sees the same zero padding).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from f3_jax import checkpoint
from f3_jax.models.autoencoder import Autoencoder, receptive_field


def _windows(total: int, core: int, context: int) -> list[tuple[int, int, int, int]]:
    """(win_start, keep_start, keep_end) cover [0, total) with windows of core + 2*context.

    Returns tuples (win_start, win_len, keep_start, keep_end) in frame units.
    """
    size = core + 2 * context
    if total <= size:
        return [(0, total, 0, total)]
    out = []
    for keep_start in range(0, total, core):
        keep_end = min(keep_start + core, total)
        start = min(max(keep_start - context, 0), total - size)
        out.append((start, size, keep_start, keep_end))
    return out


class Tokenizer:
    """Encode audio to normalized latents and decode latents to audio, batched and jitted."""

    def __init__(self, config, variables: dict, *, chunk_frames: int = 500, batch_windows: int = 8):
        self.config = config
        self.sample_rate = int(config.sample_rate)
        self.hop = int(config.model.hop)
        self.latent_dim = int(config.model.latent_dim)
        self.model = Autoencoder.from_config(config)
        self.variables = jax.tree.map(jnp.asarray, variables)
        enc_rf, dec_rf = receptive_field(config)
        self.enc_context = math.ceil(enc_rf / self.hop) + 1
        self.dec_context = int(dec_rf) + 1
        self.chunk_frames = chunk_frames
        self.batch_windows = batch_windows
        self._encode = jax.jit(
            lambda v, x: self.model.apply(v, x, train=False, method=Autoencoder.encode)["z"]
        )
        self._decode = jax.jit(lambda v, z: self.model.apply(v, z, method=Autoencoder.decode))

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None, **kwargs) -> Tokenizer:
        """From WORKDIR/export (written at every checkpoint), or a given checkpoint step."""
        export = os.path.join(workdir, checkpoint.EXPORT_DIR)
        if os.path.exists(os.path.join(export, "config.json")):
            variables, config, export_step = checkpoint.read_export(export)
            if step is None or step == export_step:
                return cls(config, variables, **kwargs)
        ckpt = checkpoint.Checkpointer(workdir, async_save=False)
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no export and no checkpoint under {workdir}")
        import ml_collections

        config = ml_collections.ConfigDict(ckpt.saved_config(step)["config"])
        gen = ckpt.restore_raw(step)["gen"]
        variables = {"params": gen.get("ema", gen["params"])}
        if "batch_stats" in gen:
            variables["batch_stats"] = gen["batch_stats"]
        return cls(config, variables, **kwargs)

    # ---- shared windowed runner -----------------------------------------------------------
    def _run_windows(
        self, fn, signals: list[np.ndarray], unit: int, out_unit: int, context: int, out_width: int
    ) -> list[np.ndarray]:
        """Applies `fn` to overlapping fixed-size windows of every signal, keeps the centres.

        `unit`: input samples per frame (hop for audio, 1 for latents); `out_unit`: output
        samples per frame.
        """
        jobs, results = [], []
        for i, sig in enumerate(signals):
            frames = sig.shape[0] // unit
            results.append(np.zeros((frames * out_unit, out_width), np.float32))
            for win_start, win_len, keep_start, keep_end in _windows(
                frames, self.chunk_frames, context
            ):
                jobs.append((i, win_start, win_len, keep_start, keep_end))
        by_len: dict[int, list] = {}
        for job in jobs:
            by_len.setdefault(job[2], []).append(job)
        for win_len, group in by_len.items():
            for k in range(0, len(group), self.batch_windows):
                part = group[k : k + self.batch_windows]
                x = np.stack([signals[i][s * unit : (s + win_len) * unit] for i, s, *_ in part])
                pad = self.batch_windows - len(part) if len(group) > self.batch_windows else 0
                if pad:
                    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                y = np.asarray(fn(self.variables, jnp.asarray(x)), np.float32)
                y = y.reshape(y.shape[0], -1, out_width)
                for row, (i, s, _, ks, ke) in enumerate(part):
                    results[i][ks * out_unit : ke * out_unit] = y[
                        row, (ks - s) * out_unit : (ke - s) * out_unit
                    ]
        return results

    # ---- public API -----------------------------------------------------------------------
    def encode(self, wav, sample_rate: int | None = None):
        """(L,) -> (T, D) latents, or (B, L) / list of (L_i,) -> list or (B, T, D) array."""
        single = isinstance(wav, np.ndarray | jax.Array) and np.ndim(wav) == 1
        signals = [np.asarray(w, np.float32) for w in ([wav] if single else list(wav))]
        if sample_rate is not None and sample_rate != self.sample_rate:
            import soxr

            signals = [
                soxr.resample(s, sample_rate, self.sample_rate).astype(np.float32) for s in signals
            ]
        signals = [np.pad(s, (0, (-len(s)) % self.hop)) for s in signals]
        out = self._run_windows(
            self._encode, signals, self.hop, 1, self.enc_context, self.latent_dim
        )
        return _pack(out, single, wav)

    def decode(self, latents):
        """(T, D) -> (T * hop,) audio at self.sample_rate; batches like `encode`."""
        single = np.ndim(latents) == 2
        signals = [np.asarray(z, np.float32) for z in ([latents] if single else list(latents))]
        out = self._run_windows(self._decode, signals, 1, self.hop, self.dec_context, 1)
        return _pack([o[:, 0] for o in out], single, latents)


def _pack(out: list[np.ndarray], single: bool, original):
    if single:
        return out[0]
    if isinstance(original, np.ndarray | jax.Array):
        return np.stack(out)
    return out
