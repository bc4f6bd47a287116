"""The trainer base of the stages that read frozen stage-1 latents and a frozen LLM (2 and 3).

What they share: the frozen autoencoder (from `config.autoencoder.workdir`'s export) and LLM
(`config.llm`), held outside the state as read-only step arguments; the batches (audio with
the transcripts tokenized for the LLM, or the latent cache's latents); the AdamW optimizer of
the trained modules; and the state layout `step, rng, skipped, params, opt` (plus a stage's
constants, such as stage 2's quantizer). `abstract_frozen` builds the frozen weights as
ShapeDtypeStructs (planning and compiling without them), `stand_ins` ({"autoencoder": stage-1
config, "representation": stage-2 config}) replaces exports that do not exist yet.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from f3_jax import parallel
from f3_jax.data import latent_records
from f3_jax.frozen import FrozenAutoencoder, FrozenLLM
from f3_jax.models.llm import abstract_params
from f3_jax.models.llm_prompt import tokenize_texts
from f3_jax.stages import optim
from f3_jax.stages.trainer import Trainer

AUDIO_KEYS = ("audio", "mask", "text_ids", "text_mask")
LATENT_KEYS = ("latents", "frame_mask", "text_ids", "text_mask")  # data.latent_cache batches


class LatentStageTrainer(Trainer):
    """A stage trained on frozen stage-1 latents with a frozen LLM."""

    batch_keys = AUDIO_KEYS
    donated_keys = ("step", "rng", "skipped", "params", "opt")

    def __init__(self, config, mesh, *, abstract_frozen: bool = False, stand_ins=None):
        self.abstract_frozen = abstract_frozen or parallel.is_abstract(mesh)
        self.stand_ins = stand_ins or {}
        super().__init__(config, mesh)

    def build_frozen(self) -> None:
        """The frozen autoencoder and LLM, and the optimizer of the trained modules."""
        ac = self.config.autoencoder
        self.ae = FrozenAutoencoder(
            ac.workdir,
            self.config.sample_rate,
            self.mesh,
            dtype=ac.dtype,
            param_dtype=ac.param_dtype,
            abstract=self.abstract_frozen,
            stand_in=self.stand_ins.get("autoencoder"),
        )
        self.llm = FrozenLLM(self.config.llm, self.mesh, abstract=self.abstract_frozen)
        o = self.config.optim
        self.lr = optim.learning_rate_schedule(
            o.lr, o.warmup_steps, self.config.train.steps, o.schedule
        )
        self.tx = optim.adamw(self.lr, o)

    def fresh_state(self, key: jax.Array, params: dict, **extra) -> dict:
        """The train state at step 0: `params` with fresh optimizer moments, plus `extra`."""
        return {
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(key),
            "skipped": jnp.zeros((), jnp.int32),
            "params": params,
            "opt": self.tx.init(params),
            **extra,
        }

    def frozen_exports(self) -> list[tuple[str, str]]:
        return [(self.ae.export_dir, "autoencoder")]

    def frozen_logical(self) -> dict:
        return {
            "autoencoder": self.ae.logical_variables(),
            "llm": abstract_params(self.llm.config),
        }

    def step_keys(self, batch: dict) -> tuple[str, ...]:
        return LATENT_KEYS if "latents" in batch else AUDIO_KEYS

    def host_batch(self, local: dict) -> dict:
        """The step's inputs from a numpy batch (audio, or the latent cache's latents) with
        the transcripts tokenized for the LLM."""
        ids, mask = tokenize_texts(
            self.llm.tokenizer, local["text"], self.config.llm.max_text_tokens
        )
        if "latents" in local:  # a training batch of the latent cache
            inputs = {"latents": local["latents"], "frame_mask": local["frame_mask"]}
        else:
            inputs = {"audio": local["audio"], "mask": local["mask"]}
        return inputs | {"text_ids": ids, "text_mask": mask}

    @functools.cached_property
    def latent_cache(self) -> latent_records.LatentCache | None:
        """The cache of this autoencoder under data.latent_cache, checked (None when off).

        Read by the train loop only, so that evaluating a run needs no cache.
        """
        root = self.config.data.get("latent_cache", "")
        return latent_records.open_cache(root, self.ae.digest, self.ae.hop) if root else None

    def latents(self, frozen: dict, batch: dict):
        """(B, T, D) latents and (B, T) frame mask: the cache's, or the frozen encoder's."""
        if "latents" in batch:
            return batch["latents"], batch["frame_mask"]
        return self.ae.latents(frozen["autoencoder"], batch["audio"], batch["mask"])

    def model_update(self, trained: dict, grads):
        """The guarded AdamW update of `params`: (new trained state, its metrics)."""
        params, opt, _, skipped, metrics = self.update(
            "model", self.tx, self.lr, trained["params"], trained["opt"], grads,
            trained["skipped"], trained["step"],
        )  # fmt: skip
        new = dict(trained, params=params, opt=opt, step=trained["step"] + 1, skipped=skipped)
        return new, metrics
