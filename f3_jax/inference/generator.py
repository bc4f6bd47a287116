"""Autoregressive audio generation with the stage-3 flow head, one jitted call per patch.

Per patch, on device: the stop head reads the LLM state; the flow head samples the patch from
noise (Euler/Heun, classifier-free guidance, temperature); the causal representation encoder
consumes its frames with a KV cache; the downsampler and adapter turn it into the next LLM
input; the LLM advances one position with its KV cache. The host only reads the stop flag.
Two modes: text to speech ([text] [instruction] -> patches), and continuation of prompt audio
([text] [instruction] [prompt patches] -> patches). The decoder turns all latents into audio.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from f3_jax import exports, parallel
from f3_jax.data.audio_io import resample
from f3_jax.frozen import FrozenAutoencoder, FrozenLLM, FrozenRepresentation
from f3_jax.models.flow_head import PatchFlowHead, StopHead
from f3_jax.models.llm import LLM, init_cache
from f3_jax.sampling import sample_flow


class Generator:
    """Holds the frozen modules and jitted steps; `generate` takes the heads' parameters.

    ae, representation: f3_jax.frozen's FrozenAutoencoder and FrozenRepresentation; llm: a
    FrozenLLM (its instruction ids are the ones the heads were trained with).
    """

    def __init__(self, config, ae, representation, llm, mesh=None):
        self.config = config
        self.ae, self.rep = ae, representation
        self.llm_config, self.llm_params = llm.config, llm.params
        self.llm = llm.module
        self.tokenizer = llm.tokenizer
        self.mesh = mesh
        self.patch = representation.patch_frames
        fh = config.flow_head
        dtype = jnp.dtype(config.compute_dtype)  # as in training
        self.head = PatchFlowHead(
            fh.width,
            fh.depth,
            self.patch,
            ae.latent_dim,
            fh.time_embed_dim,
            fh.cond_drop_prob,
            dtype=dtype,
        )
        self.stop = StopHead(fh.stop_hidden, dtype=dtype)
        self.instruction = [int(i) for i in llm.instruction_ids]
        frames_per_second = config.sample_rate / ae.hop
        self.max_patches = max(
            1, int(config.sampling.max_seconds * frames_per_second) // self.patch
        )

    @classmethod
    def from_workdir(cls, workdir: str, llm_path: str | None = None) -> tuple[Generator, dict]:
        """(generator, heads' parameters) from a stage-3 workdir's self-contained export (or,
        if it is unreadable, its latest checkpoint: `exports.read_inference`)."""
        variables, config, _ = exports.read_inference(
            workdir, field="--workdir", stage_name="stage 3 (configs/flow_*.py)"
        )
        if config.get("stage") != "flow":
            raise exports.MissingExportError(
                f"{workdir} holds a {config.get('stage')!r} run, not a stage-3 one"
            )
        export = os.path.join(workdir, exports.EXPORT_DIR)
        mesh = parallel.make_mesh(
            ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), jax.devices()[:1]
        )
        llm = FrozenLLM(config.llm, path=llm_path)
        ae = FrozenAutoencoder(os.path.join(export, "autoencoder"), config.sample_rate, mesh)
        rep = FrozenRepresentation(
            os.path.join(export, "representation"), mesh, llm.config.hidden_size
        )
        params = jax.tree.map(jnp.asarray, variables["params"])
        return cls(config, ae, rep, llm), params

    # ---- jitted pieces -----------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=0)
    def _prefill(self, llm_params, embeds, mask, cache):
        out = self.llm.apply(
            llm_params, inputs_embeds=embeds, attention_mask=mask, cache=cache, return_logits=False
        )
        return out["hidden"][:, -1], out["cache"]

    @functools.partial(jax.jit, static_argnums=0)
    def _prompt_patches(self, frozen, z, enc_cache):
        """Prompt latents (1, T, D) -> adapter embeddings, last downsampled repr, encoder cache."""
        mask = jnp.ones(z.shape[:2], jnp.float32)
        r, enc_cache = self.rep.encode(frozen["representation"], z, mask, enc_cache)
        d, _, embeds = self.rep.patches(frozen["representation"], r, mask)
        return embeds, d[:, -1], enc_cache

    @functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
    def _patch_step(
        self, params, frozen, carry, num_steps: int, method: str, guidance, temperature
    ):
        """Stop probability at the current state, then one sampled patch and the next state."""
        h, prev, llm_cache, enc_cache, key = carry
        key, k_noise = jax.random.split(key)
        stop_prob = jax.nn.sigmoid(self.stop.apply({"params": params["stop"]}, h))

        def velocity(x, t, drop):
            n = x.shape[0]
            return self.head.apply(
                {"params": params["flow"]},
                x,
                t,
                jnp.broadcast_to(h, (n, h.shape[-1])),
                jnp.broadcast_to(prev, (n, prev.shape[-1])),
                drop_condition=drop,
            )

        noise = jax.random.normal(k_noise, (1, self.patch, self.ae.latent_dim))
        x = sample_flow(
            velocity,
            noise,
            num_steps=num_steps,
            method=method,
            guidance_scale=guidance,
            temperature=temperature,
        )
        ones = jnp.ones((1, self.patch), jnp.float32)
        r, enc_cache = self.rep.encode(frozen["representation"], x, ones, enc_cache)
        d, _, embeds = self.rep.patches(frozen["representation"], r, ones)
        out = self.llm.apply(
            frozen["llm"], inputs_embeds=embeds, cache=llm_cache, return_logits=False
        )
        carry = (out["hidden"][:, -1], d[:, -1], out["cache"], enc_cache, key)
        return carry, x[0], stop_prob[0]

    @functools.partial(jax.jit, static_argnums=0)
    def _decode(self, ae_vars, z):
        return self.ae.decode(ae_vars, z)

    # ---- the loop ----------------------------------------------------------------------
    def frozen_weights(self) -> dict:
        return {
            "autoencoder": self.ae.variables,
            "llm": self.llm_params,
            "representation": self.rep.params,
        }

    def prompt_latents(self, audio: np.ndarray, sample_rate: int) -> jax.Array:
        """Prompt audio -> (1, T, D) latents, T a whole number of patches."""
        wav = resample(np.asarray(audio, np.float32), sample_rate, self.config.sample_rate)
        frames = len(wav) // self.ae.hop // self.patch * self.patch
        if frames == 0:
            raise ValueError(f"prompt audio of {len(wav)} samples is shorter than one patch")
        wav = jnp.asarray(wav[: frames * self.ae.hop])[None]
        z, _ = self.ae.latents(self.ae.variables, wav, jnp.ones_like(wav))
        return z

    def generate(
        self,
        params: dict,
        text: str = "",
        *,
        prompt_audio: np.ndarray | None = None,
        prompt_sample_rate: int | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        seed: int = 0,
        max_patches: int | None = None,
    ) -> dict:
        """Speaks `text` (or continues `prompt_audio`). Returns audio, latents, timings."""
        sp = self.config.sampling
        num_steps = int(num_steps or sp.num_steps)
        guidance = float(sp.guidance_scale if guidance_scale is None else guidance_scale)
        temperature = float(sp.temperature if temperature is None else temperature)
        max_patches = int(max_patches or self.max_patches)
        if max_patches > self.max_patches:
            raise ValueError(
                f"max_patches={max_patches} is over the cap of {self.max_patches} "
                "(config.sampling.max_seconds)"
            )
        start = time.perf_counter()
        frozen = self.frozen_weights()
        ids = (self.tokenizer.encode(" " + text.strip()) if text.strip() else []) + self.instruction
        prompt_ids = jnp.asarray(ids, jnp.int32)[None]
        embeds = self.llm.apply(self.llm_params, prompt_ids, method=LLM.embed)
        prompt_z = None
        # Caches and the prompt are sized in buckets, so that calls of other lengths reuse the
        # compiled steps: the LLM prompt is left-padded (masked) to a multiple of 16 tokens.
        frames = (self.max_patches + 1) * self.patch + self._frames(
            prompt_audio, prompt_sample_rate
        )
        enc_cache = self.rep.encoder.init_cache(1, _round_up(frames, 64))
        prev = jnp.zeros((1, self.rep.downsampler.width), jnp.float32)
        if prompt_audio is not None:
            prompt_z = self.prompt_latents(
                prompt_audio, prompt_sample_rate or self.config.sample_rate
            )
            audio_embeds, prev, enc_cache = self._prompt_patches(frozen, prompt_z, enc_cache)
            embeds = jnp.concatenate([embeds, audio_embeds.astype(embeds.dtype)], axis=1)
        pad = _round_up(embeds.shape[1], 16) - embeds.shape[1]
        mask = jnp.concatenate([jnp.zeros((1, pad)), jnp.ones((1, embeds.shape[1]))], axis=1)
        embeds = jnp.pad(embeds, ((0, 0), (pad, 0), (0, 0)))
        cache = init_cache(self.llm_config, 1, embeds.shape[1] + self.max_patches + 1)
        h, cache = self._prefill(self.llm_params, embeds, mask, cache)
        carry = (h, prev, cache, enc_cache, jax.random.key(seed))
        patches, conditions, stopped = [], [], False
        for _ in range(max_patches):
            condition = carry[:2]
            carry, x, stop_prob = self._patch_step(
                params, frozen, carry, num_steps, self.config.sampling.method, guidance, temperature
            )
            if patches and float(stop_prob) > 0.5:  # the state before this patch says: end
                stopped = True
                break
            patches.append(x)
            conditions.append(condition)
        z = jnp.concatenate(patches, axis=0)[None]
        if prompt_z is not None:
            z = jnp.concatenate([prompt_z, z], axis=1)
        audio = np.asarray(self._decode(self.ae.variables, z))[0]
        elapsed = time.perf_counter() - start
        seconds = len(audio) / self.config.sample_rate
        return {
            "audio": audio,
            "latents": np.asarray(z)[0],
            "num_patches": len(patches),
            "stopped": stopped,
            "seconds": seconds,
            "wall_seconds": elapsed,
            "x_real_time": seconds / max(elapsed, 1e-9),  # seconds of audio per second
            # (LLM state, previous downsampled representation) each patch was sampled from
            "conditions": [(np.asarray(c[0])[0], np.asarray(c[1])[0]) for c in conditions],
        }

    def _frames(self, audio, sample_rate) -> int:
        if audio is None:
            return 0
        n = len(audio) * self.config.sample_rate // (sample_rate or self.config.sample_rate)
        return n // self.ae.hop + self.patch


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit
