"""Stage-2 representations of latents, for `Tokenizer.represent` and its streams.

A causal representation encoder (the default) runs chunk by chunk on a KV cache: equal to the
whole pass (causal attention never looks ahead), with chunk x T attention scores instead of
T x T; its cache holds every earlier frame (exact attention needs them all), so its memory
grows with the duration. A bidirectional encoder needs the whole sequence at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from f3_jax.inference.windows import rechunk, round_up
from f3_jax.models.representation import RepresentationEncoder


class Representer:
    """The representation encoder of a stage-2 export, over (T, D) latents."""

    def __init__(self, config: ml_collections.ConfigDict, variables: dict, chunk_frames: int):
        self.config = config
        self.encoder = RepresentationEncoder.from_config(config)
        self.width = self.encoder.width
        self.causal = self.encoder.causal
        self.chunk_frames = chunk_frames
        self.params = jax.tree.map(jnp.asarray, variables["params"]["encoder"])
        encoder = self.encoder
        self._whole = jax.jit(
            lambda p, z, m: encoder.apply({"params": p}, z, m)["repr"].astype(jnp.float32)
        )

        def step(p, z, m, cache):
            out = encoder.apply({"params": p}, z, m, cache)
            return out["repr"].astype(jnp.float32), out["cache"]

        # The cache is donated: each step updates it in place instead of copying it.
        self._step = jax.jit(step, donate_argnums=3)

    def represent(self, latents: list[np.ndarray], frames_per_second: int) -> list[np.ndarray]:
        """(T_i, D) latents -> (T_i, width) representations each."""
        if not self.causal:
            return self.whole(latents, frames_per_second)
        c, width = self.chunk_frames, latents[0].shape[-1]
        frames = round_up(max(max(len(z) for z in latents), 1), c)
        z = np.zeros((len(latents), frames, width), np.float32)
        mask = np.zeros((len(latents), frames), np.float32)
        for i, lat in enumerate(latents):
            z[i, : len(lat)], mask[i, : len(lat)] = lat, 1.0
        chunks = ((z[:, k : k + c], mask[:, k : k + c]) for k in range(0, frames, c))
        r = np.concatenate([r for r, _ in self.cached_steps(chunks, frames)], axis=1)
        return [r[i, : len(lat)] for i, lat in enumerate(latents)]

    def whole(self, latents: list[np.ndarray], frames_per_second: int) -> list[np.ndarray]:
        """One pass over whole sequences (a bidirectional encoder needs it)."""
        # Padded to whole seconds so that few shapes compile; the mask hides the padding.
        frames = max(len(z) for z in latents)
        frames += (-frames) % max(1, frames_per_second)
        z = np.zeros((len(latents), frames, latents[0].shape[-1]), np.float32)
        mask = np.zeros((len(latents), frames), np.float32)
        for i, lat in enumerate(latents):
            z[i, : len(lat)], mask[i, : len(lat)] = lat, 1.0
        r = np.asarray(self._whole(self.params, jnp.asarray(z), jnp.asarray(mask)))
        return [r[i, : len(lat)] for i, lat in enumerate(latents)]

    def stream(
        self, latents: Iterable[np.ndarray], width: int, capacity: int, frames_per_second: int
    ) -> Iterator[np.ndarray]:
        """Consecutive (n, D) latent blocks -> consecutive (n, width) representation blocks.

        `capacity`: frames the KV cache is sized for first (doubled when full).
        """
        if not self.causal:
            whole = np.concatenate([np.zeros((0, width), np.float32), *latents])
            yield self.whole([whole], frames_per_second)[0]
            return
        c = self.chunk_frames
        chunks = (
            (z[None], (np.arange(c) < n).astype(np.float32)[None])
            for z, n in rechunk(latents, c, width)
        )
        for r, mask in self.cached_steps(chunks, round_up(max(capacity, 1), c)):
            yield r[0, : int(mask.sum())]

    def cached_steps(
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
                cache = grow_cache(cache, capacity)
            r, cache = self._step(self.params, jnp.asarray(z), jnp.asarray(mask), cache)
            used += z.shape[1]
            yield np.asarray(r), mask

    def _new_cache(self, batch: int, capacity: int) -> dict:
        # Zeros of their own for every leaf: a donated tree must not hold a buffer twice.
        shapes = jax.eval_shape(lambda: self.encoder.init_cache(batch, capacity))
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def grow_cache(cache: dict, capacity: int) -> dict:
    """The KV cache with room for `capacity` frames: empty, invalid slots appended."""

    def pad(x: jax.Array, axis: int) -> jax.Array:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, capacity - x.shape[axis])
        return jnp.pad(x, widths)

    # k, v: (B, slots, kv_heads, head_dim) per layer, or stacked over the layers in front.
    grow = lambda kv: jax.tree.map(lambda x: pad(x, x.ndim - 3), kv)
    return {**cache, "k": grow(cache["k"]), "v": grow(cache["v"]), "valid": pad(cache["valid"], 1)}
