"""Stage 3's trainer: the patch flow head and the stop head on the frozen LLM (teacher forcing).

Frozen and outside the state: the stage-1 autoencoder, the stage-2 encoder, downsampler and
adapter, and the LLM. For each clip the LLM reads [transcript] [llm.instruction] [adapter
embeddings of the clip's patches]; the flow head learns patch t from the LLM state before it
and the downsampled representation of patch t-1; the stop head learns, from the state after
the last patch, that the clip ends there (clips cut by the crop have no transcript and no end,
so they train the flow head only). The state is
  step, rng, skipped, params: {flow, stop}, opt.
Batches of the latent cache hold latents (their step skips the autoencoder); validation stays
on audio.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from f3_jax import dsp, exports, parallel, storage
from f3_jax.config import ConfigError
from f3_jax.frozen import FrozenRepresentation
from f3_jax.inference.generator import Generator
from f3_jax.losses.flow_matching import flow_matching_loss, stop_loss
from f3_jax.models.flow_head import PatchFlowHead, StopHead
from f3_jax.stages.flow import teacher_forcing
from f3_jax.stages.latent_trainer import LatentStageTrainer


class FlowTrainer(LatentStageTrainer):
    """Builds the stage-3 state and its jitted step functions for one mesh."""

    headline_metrics = (
        "flow/loss",
        "flow/gaussian_baseline",
        "stop/accuracy",
        "flow/teacher_forced_mel_distance",
    )

    def build(self) -> None:
        self.build_frozen()
        config, rc = self.config, self.config.representation
        self.representation = FrozenRepresentation(
            rc.workdir,
            self.mesh,
            self.llm.config.hidden_size,
            dtype=rc.dtype,
            param_dtype=rc.param_dtype,
            abstract=self.abstract_frozen,
            stand_in=self.stand_ins.get("representation"),
            latent_dim=self.ae.latent_dim,
        )
        self._check_same_autoencoder()
        self.patch = self.representation.patch_frames
        fh = config.flow_head
        dtype = jnp.dtype(config.compute_dtype)
        self.head = PatchFlowHead(
            fh.width, fh.depth, self.patch, self.ae.latent_dim, fh.time_embed_dim,
            fh.cond_drop_prob, dtype=dtype, remat=fh.remat,
        )  # fmt: skip
        self.stop = StopHead(fh.stop_hidden, dtype=dtype)
        self.forcing = teacher_forcing.TeacherForcing(self)
        self._generator = None

    def _check_same_autoencoder(self) -> None:
        if self.representation.export_dir is None or self.ae.digest is None:  # stand-ins
            return
        copy = storage.as_path(self.representation.export_dir, "autoencoder", exports.WEIGHTS)
        if copy.exists() and exports.file_digest(copy) != self.ae.digest:
            raise ConfigError(
                f"config.autoencoder.workdir={self.config.autoencoder.workdir!r} is not the "
                f"autoencoder stage 2 ({self.config.representation.workdir}) was trained on"
            )

    # ---- state -------------------------------------------------------------------------
    def boxed_state(self) -> dict:
        key = jax.random.key(self.config.seed)
        k_flow, k_stop, k_drop = jax.random.split(key, 3)
        x = jnp.zeros((1, 1, self.patch, self.ae.latent_dim), jnp.float32)
        h = jnp.zeros((1, 1, self.llm.config.hidden_size), jnp.float32)
        d = jnp.zeros((1, 1, self.representation.downsampler.width), jnp.float32)
        flow = self.head.init({"params": k_flow, "dropout": k_drop}, x, jnp.zeros((1, 1)), h, d)
        params = {"flow": flow["params"], "stop": self.stop.init(k_stop, h)["params"]}
        return self.fresh_state(key, params)

    def frozen_weights(self) -> dict:
        return {
            "autoencoder": self.ae.variables,
            "llm": self.llm.params,
            "representation": self.representation.params,
        }

    def frozen_logical(self) -> dict:
        return super().frozen_logical() | {"representation": self.representation.logical_params()}

    def frozen_exports(self) -> list[tuple[str, str]]:
        return super().frozen_exports() + [(self.representation.export_dir, "representation")]

    # ---- the step ----------------------------------------------------------------------
    def train_step_fn(self, trained, constants, frozen, batch, *, variant):
        forced = self.forcing.targets_and_conditions(frozen, batch)
        key = jax.random.fold_in(jax.random.wrap_key_data(trained["rng"]), trained["step"])
        k_flow, k_drop = jax.random.split(key)
        fl = self.config.flow_loss

        def loss_fn(params):
            flow = flow_matching_loss(
                self.forcing.velocity(params, forced, k_drop, train=True),
                forced["x1"],
                forced["pmask"] > 0,
                k_flow,
                time_schedule=fl.time_schedule,
                logit_mean=fl.logit_mean,
                logit_std=fl.logit_std,
            )
            logits = self.stop.apply({"params": params["stop"]}, forced["states"])
            stop = stop_loss(logits, forced["stop_target"], forced["stop_mask"], fl.stop_pos_weight)
            return flow + fl.stop_weight * stop, (flow, stop)

        (total, (flow, stop)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained["params"])
        new, metrics = self.model_update(trained, grads)
        return new, metrics | {"loss/total": total, "loss/flow": flow, "loss/stop": stop}

    # ---- validation --------------------------------------------------------------------
    def eval_step_fn(self, variables, frozen, batch):
        params = variables["params"]
        forced = self.forcing.targets_and_conditions(frozen, batch)
        key = jax.random.key(self.config.seed + 1)  # the same noise at every validation
        metrics, samples = self.forcing.metrics(params, forced, key)
        est = self._decode_patches(frozen, samples, batch["mask"])
        ref = batch["audio"] * batch["mask"]
        mel = dsp.mel_distance(ref, est, sample_rate=self.config.sample_rate, mask=batch["mask"])
        metrics["flow/teacher_forced_mel_distance"] = (mel, jnp.ones_like(mel))
        return metrics, est

    def _decode_patches(self, frozen, patches, mask):
        b, n = patches.shape[:2]
        z = patches.reshape(b, n * self.patch, self.ae.latent_dim)
        wav = self.ae.decode(frozen["autoencoder"], z)
        length = mask.shape[1]
        wav = jnp.pad(wav, ((0, 0), (0, max(0, length - wav.shape[1]))))[:, :length]
        return wav * mask

    def generator(self) -> Generator:
        """A Generator over the trainer's frozen modules (built once, reused every eval)."""
        if self._generator is None:
            self._generator = Generator(
                self.config, self.ae, self.representation, self.llm, self.mesh
            )
        return self._generator

    def eval_samples(self, writer, step: int, local: dict, est, state: dict) -> dict:
        """Teacher-forced decodes and free generations from valid transcripts, as audio."""
        if step % self.config.train.sample_every and step != self.config.train.steps:
            return {}
        est = parallel.to_host(est)
        sr = self.config.sample_rate
        for j in range(min(2, est.shape[0])):
            writer.audio(step, f"teacher_forced/{j}/original", local["audio"][j], sr)
            writer.audio(step, f"teacher_forced/{j}/sampled", est[j], sr)
        texts = [str(t) for t in local["text"] if str(t).strip()]
        speeds = []
        for j, text in enumerate(texts[: self.config.eval.num_generate]):
            out = self.generator().generate(parallel.to_host(state["params"]), text, seed=j)
            writer.audio(step, f"generated/{j}", out["audio"], sr)
            writer.text(step, f"generated/{j}/text", text)
            speeds.append(out["x_real_time"])
        return {"generation/x_real_time": float(np.mean(speeds))} if speeds else {}
