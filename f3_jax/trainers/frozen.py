"""Frozen modules of earlier stages, loaded from their workdirs' exports.

Stages 2 and 3 run the stage-1 autoencoder (and stage 3 the stage-2 encoder, downsampler and
adapter) inside their steps as read-only, replicated arguments: never in the optimizer, never
in the checkpoint. An export copied into a later stage's export (`copy_export`) makes that
workdir self-contained for inference.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import jax
import jax.numpy as jnp

from f3_jax import checkpoint, parallel
from f3_jax.config import ConfigError
from f3_jax.models.adapter import Downsampler, LLMAdapter
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.models.representation import RepresentationEncoder


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def frame_mask(mask: jax.Array, hop: int) -> jax.Array:
    """(B, L) sample mask -> (B, L / hop) latent-frame mask: frames mostly of real audio."""
    b, n = mask.shape
    return (mask[:, : n // hop * hop].reshape(b, -1, hop).mean(axis=-1) > 0.5).astype(jnp.float32)


def export_dir(workdir: str, key: str, stage_name: str) -> str:
    """WORKDIR/export (or WORKDIR itself when it is an export), else a ConfigError naming `key`."""
    if os.path.exists(os.path.join(workdir, "weights.safetensors")):
        return workdir
    export = os.path.join(workdir, checkpoint.EXPORT_DIR)
    if not os.path.exists(os.path.join(export, "config.json")):
        raise ConfigError(
            f"config.{key}={workdir!r} has no {checkpoint.EXPORT_DIR}/config.json: "
            f"train {stage_name} there first"
        )
    return export


def copy_export(source: str, dest: str) -> None:
    """Copies the export directory `source` to `dest` unless the same weights are there."""
    have = os.path.join(dest, "weights.safetensors")
    if os.path.exists(have) and file_digest(have) == file_digest(
        os.path.join(source, "weights.safetensors")
    ):
        return
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


class FrozenAutoencoder:
    """The stage-1 autoencoder from an export, replicated on the mesh."""

    def __init__(self, workdir: str, sample_rate: int, mesh, key: str = "autoencoder.workdir"):
        export = export_dir(workdir, key, "stage 1 (configs/ae_*.py)")
        variables, self.config, self.step = checkpoint.read_export(export)
        if int(self.config.sample_rate) != int(sample_rate):
            raise ConfigError(
                f"config.sample_rate={sample_rate} differs from the autoencoder's "
                f"{self.config.sample_rate} ({export}/config.json)"
            )
        self.export_dir = export
        self.digest = file_digest(os.path.join(export, "weights.safetensors"))
        self.model = Autoencoder.from_config(self.config)
        self.hop = int(self.config.model.hop)
        self.latent_dim = int(self.config.model.latent_dim)
        self.variables = jax.device_put(variables, parallel.replicated(mesh))

    def latents(self, variables, audio, mask):
        """(B, L) audio -> (B, T, D) clean latents (no gradient) and the (B, T) frame mask."""
        out = self.model.apply(variables, audio * mask, train=False, method=Autoencoder.encode)
        return jax.lax.stop_gradient(out["z"]), frame_mask(mask, self.hop)

    def decode(self, variables, z):
        return self.model.apply(variables, z, method=Autoencoder.decode)


class FrozenRepresentation:
    """The stage-2 encoder, downsampler and adapter from an export, replicated on the mesh."""

    def __init__(self, workdir: str, mesh, llm_hidden: int):
        export = export_dir(workdir, "representation.workdir", "stage 2 (configs/repr_*.py)")
        variables, self.config, self.step = checkpoint.read_export(export)
        self.export_dir = export
        params = variables["params"]
        adapter_out = params["adapter"]["out_proj"]["kernel"].shape[-1]
        if adapter_out != llm_hidden:
            raise ConfigError(
                f"config.llm.path: the LLM's embedding width is {llm_hidden}, but stage 2's "
                f"adapter ({export}) maps into width {adapter_out}: use stage 2's LLM"
            )
        a = self.config.adapter
        self.encoder = RepresentationEncoder.from_config(self.config)
        self.downsampler = Downsampler(a.downsample, a.width, self.config.compute_dtype)
        self.adapter = LLMAdapter(a.hidden, llm_hidden, self.config.compute_dtype)
        self.patch_frames = int(a.downsample)
        keep = {k: params[k] for k in ("encoder", "downsampler", "adapter")}
        self.params = jax.device_put(keep, parallel.replicated(mesh))

    def encode(self, params, z, fmask, cache=None):
        """Representations (B, T, W) (and the updated cache when given one)."""
        out = self.encoder.apply({"params": params["encoder"]}, z, fmask, cache)
        return out["repr"], out["cache"]

    def patches(self, params, r, fmask):
        """Downsampled representations (B, N, Wd), their mask, and adapter embeddings."""
        d, pmask = self.downsampler.apply({"params": params["downsampler"]}, r, fmask)
        return d, pmask, self.adapter.apply({"params": params["adapter"]}, d)
