"""Frozen modules of earlier stages, loaded from their exports, and the frozen LLM.

Stages 2 and 3, the Generator and the evaluators run the stage-1 autoencoder (and stage 3 the
stage-2 encoder, downsampler and adapter) as read-only arguments: never in an optimizer, never
in a checkpoint, no gradients for them. Their weights are placed by their parameters' logical
axes (split over fsdp like a trained model's, replicated on a data-parallel mesh). The frozen
LLM and the ids of a stage's instruction are loaded here once (`FrozenLLM`).
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from f3_jax import exports, parallel
from f3_jax.config import ConfigError
from f3_jax.dsp import frame_mask
from f3_jax.models.adapter import Downsampler, LLMAdapter
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.models.llm import LLM
from f3_jax.models.llm_loaders import load_llm
from f3_jax.models.representation import RepresentationEncoder


def cast_floats(tree, dtype: str):
    """Floating-point leaves (arrays or ShapeDtypeStructs) in `dtype`, others unchanged."""
    dtype = jnp.dtype(dtype)

    def one(x):
        if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype:
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree.map(one, tree)


def place(tree, logical, mesh, abstract: bool):
    """`tree` (arrays, or shapes when abstract) on the shardings of its parameters' logical
    axes (`logical`: the same tree with nn.LogicallyPartitioned boxes, from eval_shape);
    abstract: ShapeDtypeStructs carrying those shardings."""
    shardings = parallel.shardings_of(logical, mesh)
    if abstract:
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
        )
    return jax.device_put(tree, shardings)


def with_precision(config, dtype: str):
    """A copy of an export's config with its compute dtype replaced ("" keeps it)."""
    if not dtype:
        return config
    config = config.copy_and_resolve_references()
    config.compute_dtype = dtype
    return config


class FrozenAutoencoder:
    """The stage-1 autoencoder from an export, placed on the mesh by its logical axes.

    dtype: its compute dtype here ("" = its export's compute_dtype); param_dtype: the storage
    dtype of its weights (they are read-only jit arguments: no gradients, no optimizer state).
    abstract: the weights are ShapeDtypeStructs (enough to trace, lower and compile the steps,
    not to run them): for memory planning, and the only option on an AbstractMesh. stand_in: a
    stage-1 config used instead of the export's (abstract only: no weights are read).
    """

    def __init__(
        self,
        workdir: str,
        sample_rate: int,
        mesh,
        key: str = "autoencoder.workdir",
        *,
        dtype: str = "",
        param_dtype: str = "float32",
        abstract: bool = False,
        stand_in=None,
    ):
        if stand_in is not None:
            if not abstract:
                raise ValueError("a stand-in autoencoder config has no weights: use abstract")
            export, variables, config, self.step = None, None, stand_in, 0
            self.digest = None
        else:
            export = exports.find(workdir, key, "stage 1 (configs/ae_*.py)")
            variables, config, self.step = exports.read(export)
            self.digest = exports.file_digest(os.path.join(export, exports.WEIGHTS))
        if int(config.sample_rate) != int(sample_rate):
            raise ConfigError(
                f"config.sample_rate={sample_rate} differs from the autoencoder's "
                f"{config.sample_rate} ({export or 'stand-in'}/config.json)"
            )
        self.export_dir = export
        self.config = with_precision(config, dtype)
        self.model = Autoencoder.from_config(self.config)
        self.hop = int(self.config.model.hop)
        self.latent_dim = int(self.config.model.latent_dim)
        logical = self.logical_variables()
        if variables is None:
            variables = nn.unbox(logical)
        variables = cast_floats(variables, param_dtype)
        self.variables = place(variables, logical, mesh, abstract)

    def logical_variables(self) -> dict:
        """The variables' shapes with their logical axis names (boxes), from tracing alone."""
        key = jax.random.key(0)
        wav = jnp.zeros((1, 4 * self.hop), jnp.float32)
        init = lambda: self.model.init({"params": key, "noise": key}, wav, train=False)
        return jax.eval_shape(init)

    def latents(self, variables, audio, mask):
        """(B, L) audio -> (B, T, D) clean float32 latents (no gradient) and the frame mask."""
        out = self.model.apply(variables, audio * mask, train=False, method=Autoencoder.encode)
        z = jax.lax.stop_gradient(out["z"]).astype(jnp.float32)
        return z, frame_mask(mask, self.hop, mask.shape[1] // self.hop)

    def decode(self, variables, z):
        return self.model.apply(variables, z, method=Autoencoder.decode)


class FrozenRepresentation:
    """The stage-2 encoder, downsampler and adapter from an export, placed by logical axes.

    dtype, param_dtype, abstract, stand_in (a stage-2 config): as for FrozenAutoencoder;
    latent_dim (the autoencoder's) shapes a stand-in's encoder input.
    """

    def __init__(
        self,
        workdir: str,
        mesh,
        llm_hidden: int,
        *,
        dtype: str = "",
        param_dtype: str = "float32",
        abstract: bool = False,
        stand_in=None,
        latent_dim: int = 64,
    ):
        if stand_in is not None:
            if not abstract:
                raise ValueError("a stand-in representation config has no weights: use abstract")
            export, params, config, self.step = None, None, stand_in, 0
        else:
            export = exports.find(workdir, "representation.workdir", "stage 2 (configs/repr_*.py)")
            variables, config, self.step = exports.read(export)
            params = variables["params"]
            adapter_out = params["adapter"]["out_proj"]["kernel"].shape[-1]
            if adapter_out != llm_hidden:
                raise ConfigError(
                    f"config.llm.path: the LLM's embedding width is {llm_hidden}, but stage 2's "
                    f"adapter ({export}) maps into width {adapter_out}: use stage 2's LLM"
                )
        self.export_dir = export
        self.config = with_precision(config, dtype)
        a = self.config.adapter
        self.encoder = RepresentationEncoder.from_config(self.config)
        self.downsampler = Downsampler(a.downsample, a.width, self.config.compute_dtype)
        self.adapter = LLMAdapter(a.hidden, llm_hidden, self.config.compute_dtype)
        self.patch_frames = int(a.downsample)
        if params is not None:
            latent_dim = params["encoder"]["input_proj"]["kernel"].shape[0]
        self.latent_dim = int(latent_dim)
        logical = self.logical_params()
        if params is None:
            params = nn.unbox(logical)
        keep = cast_floats({k: params[k] for k in logical}, param_dtype)
        self.params = place(keep, logical, mesh, abstract)

    def logical_params(self) -> dict:
        """{encoder, downsampler, adapter} parameter shapes with their logical axis names."""

        def init():
            keys = jax.random.split(jax.random.key(0), 3)
            frames = 4 * self.patch_frames
            z = jnp.zeros((1, frames, self.latent_dim), jnp.float32)
            m = jnp.ones((1, frames), jnp.float32)
            r = jnp.zeros((1, frames, self.encoder.width), jnp.float32)
            d = jnp.zeros((1, 1, self.downsampler.width), jnp.float32)
            return {
                "encoder": self.encoder.init(keys[0], z, m)["params"],
                "downsampler": self.downsampler.init(keys[1], r, m)["params"],
                "adapter": self.adapter.init(keys[2], d)["params"],
            }

        return jax.eval_shape(init)

    def encode(self, params, z, fmask, cache=None):
        """Representations (B, T, W) (and the updated cache when given one)."""
        out = self.encoder.apply({"params": params["encoder"]}, z, fmask, cache)
        return out["repr"], out["cache"]

    def patches(self, params, r, fmask):
        """Downsampled representations (B, N, Wd), their mask, and adapter embeddings."""
        d, pmask = self.downsampler.apply({"params": params["downsampler"]}, r, fmask)
        return d, pmask, self.adapter.apply({"params": params["adapter"]}, d)


class FrozenLLM:
    """A frozen decoder-only LLM from `llm_cfg` (a config's `llm` group: path, dtypes,
    instruction, scan_layers, remat), its tokenizer, and the ids of the stage's instruction.

    mesh: its weights are placed by their logical axes (None: the default device); abstract:
    ShapeDtypeStructs only (planning, compiling); path: another location of the same weights.
    """

    def __init__(self, llm_cfg, mesh=None, *, abstract: bool = False, path: str | None = None):
        self.config, self.params, self.tokenizer = load_llm(
            path or llm_cfg.path,
            mesh=mesh,
            param_dtype=llm_cfg.param_dtype,
            dtype=llm_cfg.dtype,
            remat=llm_cfg.get("remat", "none"),
            scan_layers=bool(llm_cfg.get("scan_layers", False)),
            abstract=abstract,
        )
        self.module = LLM(self.config)
        self.instruction_ids = np.asarray(self.tokenizer.encode(llm_cfg.instruction), np.int32)
