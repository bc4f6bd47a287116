"""Every program of a stage, lowerable from shapes alone: the one adapter to the trainers.

`programs(trainer)` returns {name: Program} for the trainer's stage:
  train            the train step (the Trainer base's `lower_train_step`)
  eval             the eval step at the eval batch and the longest eval bucket
                   (`lower_eval_step`)
  encode, decode   stage 1: the codec as `f3_jax.inference.Tokenizer` runs it (one chip,
                   its default `batch_windows` windows of its longest window)
  generate         stage 3: one patch of autoregressive generation (stop head, flow sampling,
                   representation encoder and LLM with their caches), as
                   `f3_jax.inference.generator.Generator` runs it in eval

Everything here that reaches past a trainer's public interface (the Tokenizer's windows, the
Generator's per-patch step) is in this module only.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from f3_jax import parallel
from f3_jax.inference.generator import Generator
from f3_jax.inference.tokenizer import Tokenizer
from f3_jax.inference.windows import context_frames, window_length
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.models.llm import LLM, init_cache


@dataclasses.dataclass
class Program:
    """One compilable program: `lower()` gives its jax Lowered from shapes alone."""

    name: str
    description: str  # what one call computes, with its shapes
    lower: Callable[[], jax.stages.Lowered]
    audio_seconds: float = 0.0  # seconds of audio one call processes (0: not audio-sized)
    model_flops: Callable[[], float] | None = None  # per-device FLOPs counted from the jaxpr


def programs(trainer) -> dict[str, Program]:
    """The stage's programs, train step first."""
    config = trainer.config
    out = {"train": _train(trainer), "eval": _eval(trainer)}
    if config.stage == "autoencoder":
        out |= _codec(trainer)
    if config.stage == "flow":
        out["generate"] = _generation_step(trainer)
    return out


# ---- shapes ----------------------------------------------------------------------------------
def _sds(mesh: Mesh, shape: tuple[int, ...], dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))


def audio_batch(trainer, batch: int, samples: int) -> dict:
    """Audio (and for stages 2, 3 tokenized transcripts) of `batch` clips, split like real
    ones: the trainer's `batch_keys`."""
    mesh, config = trainer.mesh, trainer.config
    out = {
        "audio": _sds(mesh, (batch, samples), jnp.float32),
        "mask": _sds(mesh, (batch, samples), jnp.float32),
    }
    if "text_ids" in trainer.batch_keys:
        tokens = config.llm.max_text_tokens
        out["text_ids"] = _sds(mesh, (batch, tokens), jnp.int32)
        out["text_mask"] = _sds(mesh, (batch, tokens), jnp.float32)
    return out


def latent_batch(trainer, batch: int) -> dict:
    """The latent cache's training batch (data.latent_cache set, stages 2 and 3): latents of
    the crop and their frame mask instead of audio, so the step runs no frozen encoder."""
    frames, dim = trainer.crop // trainer.ae.hop, trainer.ae.latent_dim
    audio = audio_batch(trainer, batch, trainer.crop)
    return {
        "latents": _sds(trainer.mesh, (batch, frames, dim), jnp.float32),
        "frame_mask": _sds(trainer.mesh, (batch, frames), jnp.float32),
        "text_ids": audio["text_ids"],
        "text_mask": audio["text_mask"],
    }


def eval_samples(config) -> int:
    """The longest eval batch: data.eval_max_seconds, capped at the longest bucket (as
    f3_jax.data pads them)."""
    longest = max(config.data.eval_bucket_seconds)
    return round(min(config.data.eval_max_seconds, longest) * config.sample_rate)


def train_step_of(config) -> int:
    """The global step whose train program is compiled: the largest (stage 1's GAN terms on)."""
    return int(config.train.get("adversarial_start", 0))


def train_batch(trainer) -> tuple[dict, str]:
    """The global train batch's shapes, as the data pipeline gives them to the step (latents
    of the crop with data.latent_cache in stages 2 and 3, else audio), and which it is."""
    config = trainer.config
    b, n = config.train.batch_size, trainer.crop
    cached = bool(config.data.get("latent_cache", "")) and "text_ids" in trainer.batch_keys
    if cached:
        return latent_batch(trainer, b), "latent-cache batch"
    return audio_batch(trainer, b, n), "global batch"


def _train(trainer) -> Program:
    config = trainer.config
    b, n = config.train.batch_size, trainer.crop
    batch, source = train_batch(trainer)
    step = train_step_of(config)

    def flops() -> float:
        return trainer.step_flops(trainer.abstract_state(), batch, step)

    return Program(
        "train",
        f"train step at step {step}: {source} {b} x {n / config.sample_rate:g} s",
        lambda: trainer.lower_train_step(batch, step),
        audio_seconds=b * n / config.sample_rate,
        model_flops=flops,
    )


def _eval(trainer) -> Program:
    config = trainer.config
    b, n = config.data.eval_batch_size, eval_samples(config)
    batch = audio_batch(trainer, b, n)
    return Program(
        "eval",
        f"eval step: global batch {b} x {n / config.sample_rate:g} s",
        lambda: trainer.lower_eval_step(batch),
        audio_seconds=b * n / config.sample_rate,
    )


def _in_mesh(mesh: Mesh, fn: Callable[[], jax.stages.Lowered]) -> jax.stages.Lowered:
    with jax.set_mesh(mesh):
        return fn()


def _on(sharding, tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


# ---- stage 1: the codec ----------------------------------------------------------------------
def _tokenizer_default(name: str) -> int:
    return int(inspect.signature(Tokenizer.__init__).parameters[name].default)


def _codec(trainer) -> dict[str, Program]:
    """Encode and decode as the Tokenizer runs them: unsharded, on one chip."""
    config, model = trainer.config, trainer.model
    one = jax.make_mesh(
        (1, 1, 1),
        parallel.MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * 3,
        devices=np.asarray(trainer.mesh.devices).reshape(-1)[:1],
    )
    whole = NamedSharding(one, PartitionSpec())
    variables = _on(whole, trainer.inference_variables(trainer.abstract_state()))
    hop, rows = int(config.model.hop), _tokenizer_default("batch_windows")
    chunk = _tokenizer_default("chunk_frames")
    enc_context, dec_context = context_frames(config)
    enc_frames = window_length(chunk, enc_context)
    dec_frames = window_length(chunk, dec_context)
    wav = jax.ShapeDtypeStruct((rows, enc_frames * hop), jnp.float32, sharding=whole)
    z = jax.ShapeDtypeStruct((rows, dec_frames, int(config.model.latent_dim)), jnp.float32)
    z = jax.ShapeDtypeStruct(z.shape, z.dtype, sharding=whole)
    valid = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=whole)  # as the Tokenizer calls

    def encode_latents(v, x, n):
        return model.apply(v, x, train=False, valid=n * hop, method=Autoencoder.encode)["z"]

    encode = jax.jit(encode_latents)
    decode = jax.jit(lambda v, x, n: model.apply(v, x, n, method=Autoencoder.decode))

    def seconds(frames: int) -> float:
        return rows * frames * hop / config.sample_rate

    return {
        "encode": Program(
            "encode",
            f"codec encode on one chip: {rows} windows x {enc_frames} frames",
            lambda: _in_mesh(one, lambda: encode.trace(variables, wav, valid).lower()),
            audio_seconds=seconds(enc_frames),
        ),
        "decode": Program(
            "decode",
            f"codec decode on one chip: {rows} windows x {dec_frames} frames",
            lambda: _in_mesh(one, lambda: decode.trace(variables, z, valid).lower()),
            audio_seconds=seconds(dec_frames),
        ),
    }


# ---- stage 3: one generated patch ------------------------------------------------------------
def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _generation_carry(gen: Generator, whole, prompt: int, frames: int):
    """The carry of Generator._patch_step at its longest caches, batch 1, replicated."""
    ids = jax.ShapeDtypeStruct((1, prompt), jnp.int32)
    embeds = jax.eval_shape(lambda p, i: gen.llm.apply(p, i, method=LLM.embed), gen.llm_params, ids)
    positions = prompt + gen.max_patches + 1
    return _on(
        whole,
        (
            jax.ShapeDtypeStruct((1, embeds.shape[-1]), embeds.dtype),
            jax.ShapeDtypeStruct((1, gen.rep.downsampler.width), jnp.float32),
            jax.eval_shape(lambda: init_cache(gen.llm_config, 1, positions)),
            jax.eval_shape(lambda: gen.rep.encoder.init_cache(1, frames)),
            jax.eval_shape(lambda: jax.random.key(0)),
        ),
    )


def _generation_step(trainer) -> Program:
    """One call of Generator._patch_step at its longest caches (text prompt of
    llm.max_text_tokens, sampling.max_seconds of audio), batch 1, replicated over the mesh
    with the frozen weights where training placed them (as eval's generations run)."""
    config, gen, mesh = trainer.config, trainer.generator(), trainer.mesh
    whole = parallel.replicated(mesh)
    prompt = _round_up(config.llm.max_text_tokens + len(gen.instruction), 16)
    frames = _round_up((gen.max_patches + 1) * gen.patch, 64)
    carry = _generation_carry(gen, whole, prompt, frames)
    params = _on(whole, trainer.abstract_state()["params"])
    sp = config.sampling
    statics = (int(sp.num_steps), str(sp.method), float(sp.guidance_scale))

    def lower() -> jax.stages.Lowered:
        traced = Generator._patch_step.trace(
            gen, params, gen.frozen_weights(), carry, *statics, float(sp.temperature)
        )
        return traced.lower()

    return Program(
        "generate",
        f"one generated patch ({gen.patch} frames, {sp.num_steps} {sp.method} steps, "
        f"caches of {prompt + gen.max_patches + 1} LLM positions and {frames} frames)",
        lambda: _in_mesh(mesh, lower),
        audio_seconds=gen.patch * trainer.ae.hop / config.sample_rate,
    )
