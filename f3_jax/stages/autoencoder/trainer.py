"""Stage 1's trainer: the autoencoder (any bottleneck.kind) with its GAN discriminators.

The state is a plain dict (readable checkpoints, strict restores):
  step, rng, skipped_gen, skipped_disc,
  gen: {params, opt, [ema], [batch_stats]},  disc: {params, opt}.
A train step is one jitted program: the generator update (reconstruction, spectral and
adversarial losses), then the discriminator update on the same reconstruction (the generator
runs once). Each STFT of the real and of the reconstructed audio is computed once per step
(`dsp.stfts`) and shared by the mel loss, the STFT loss and the STFT discriminators of both
updates. Whether the adversarial terms are on is decided on the host from the global step (the
step variant), so each of the two variants compiles once and neither wastes work. A bottleneck
with a loss of its own (the VAE's KL) adds it as a term, averaged over the real latent frames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from f3_jax import dsp, parallel
from f3_jax.losses import adversarial, spectral
from f3_jax.metrics.audio import si_sdr
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.models.discriminators import Discriminators
from f3_jax.stages import optim
from f3_jax.stages.trainer import Trainer


class AutoencoderTrainer(Trainer):
    """Builds the stage-1 state and its jitted step functions for one mesh."""

    headline_metrics = ("mel_distance", "si_sdr")

    def __init__(self, config, mesh, **_):
        super().__init__(config, mesh)

    def build(self) -> None:
        config = self.config
        self.model = Autoencoder.from_config(config)
        self.disc = Discriminators.from_config(config)
        o, t = config.optim, config.train
        self.gen_lr = optim.learning_rate_schedule(o.gen_lr, o.warmup_steps, t.steps, o.schedule)
        self.disc_lr = optim.learning_rate_schedule(o.disc_lr, o.warmup_steps, t.steps, o.schedule)
        self.gen_tx = optim.adamw(self.gen_lr, o)
        self.disc_tx = optim.adamw(self.disc_lr, o)
        self.uses_batch_stats = self.model.uses_batch_stats
        self._grad_norm_jits: dict[bool, object] = {}  # log_metrics' program per variant

    # ---- state -------------------------------------------------------------------------
    def boxed_state(self) -> dict:
        key = jax.random.key(self.config.seed)
        k_gen, k_noise, k_disc = jax.random.split(key, 3)
        wav = jnp.zeros((1, self.crop), jnp.float32)
        variables = self.model.init({"params": k_gen, "noise": k_noise}, wav, train=False)
        gen = {"params": variables["params"], "opt": self.gen_tx.init(variables["params"])}
        if self.config.train.ema_decay > 0:
            gen["ema"] = variables["params"]
        if self.uses_batch_stats:
            gen["batch_stats"] = variables["batch_stats"]
        disc_params = self.disc.init(k_disc, wav)["params"]
        return {
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(key),
            "skipped_gen": jnp.zeros((), jnp.int32),
            "skipped_disc": jnp.zeros((), jnp.int32),
            "gen": gen,
            "disc": {"params": disc_params, "opt": self.disc_tx.init(disc_params)},
        }

    def trained_params(self, state: dict):
        return state["gen"]["params"]

    def inference_variables(self, state: dict) -> dict:
        """Generator variables for eval and export: EMA weights when kept, else raw."""
        gen = state["gen"]
        variables = {"params": gen.get("ema", gen["params"])}
        if self.uses_batch_stats:
            variables["batch_stats"] = gen["batch_stats"]
        return variables

    # ---- step variants -----------------------------------------------------------------
    def adversarial_on(self, step: int) -> bool:
        return step >= self.config.train.adversarial_start

    def variant(self, batch: dict, step: int) -> bool:
        return self.adversarial_on(step)

    def step_phases(self) -> list[tuple[int, float]]:
        """The generator-only steps and, from train.adversarial_start, the steps with
        discriminators, with their relative FLOPs (traced steps; nothing is compiled)."""
        start = self.config.train.adversarial_start
        if start <= 0 or start >= self.config.train.steps:
            return [(0, 1.0)]
        state = self.abstract_state()
        shape = (self.config.train.batch_size, self.crop)
        batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32) for k in self.batch_keys}
        costs = [self.step_flops(state, batch, step) for step in (0, start)]
        return [(0, 1.0), (start, costs[1] / max(costs[0], 1.0))]

    # ---- losses ------------------------------------------------------------------------
    def _stft_sizes(self, adversarial_on: bool) -> tuple[int, ...]:
        """FFT sizes of every spectrum a step reads (losses, and discriminators when on)."""
        lc = self.config.loss
        sizes = set(lc.mel_window_sizes) | set(lc.stft_fft_sizes)
        if adversarial_on:
            sizes |= set(self.disc.stft_sizes())
        return tuple(sorted(sizes))

    def _ref_spectra(self, batch, adversarial_on: bool):
        ref = batch["audio"] * batch["mask"]
        return dsp.stfts(ref, self._stft_sizes(adversarial_on))

    def _gen_terms(self, params, extra, disc_params, batch, key, adversarial_on: bool, ref_spec):
        """Loss terms; ref_spec = `_ref_spectra(batch, adversarial_on)` (no gradient)."""
        audio, mask = batch["audio"], batch["mask"]
        variables = {"params": params, **extra}
        if self.uses_batch_stats:
            out, new_extra = self.model.apply(
                variables, audio, train=True, rngs={"noise": key}, mutable=["batch_stats"]
            )
        else:
            out, new_extra = self.model.apply(variables, audio, train=True, rngs={"noise": key}), {}
        ref, est = audio * mask, out["wav"] * mask
        est_spec = dsp.stfts(est, self._stft_sizes(adversarial_on))
        spectra = (ref_spec, est_spec)
        lc = self.config.loss
        terms = {
            "mel": spectral.multi_scale_mel_loss(
                ref,
                est,
                sample_rate=self.config.sample_rate,
                window_sizes=lc.mel_window_sizes,
                mel_bins=lc.mel_bins,
                eps=lc.log_eps,
                spectra=spectra,
            ),
            "stft": spectral.multi_resolution_stft_loss(
                ref, est, fft_sizes=lc.stft_fft_sizes, eps=lc.log_eps, spectra=spectra
            ),
        }
        terms |= _bottleneck_terms(out, mask, self.model.hop)
        if adversarial_on:
            fake = self.disc.apply({"params": disc_params}, est, est_spec)
            real = self.disc.apply({"params": disc_params}, ref, ref_spec)
            terms["adv"] = adversarial.lsgan_generator_loss(fake)
            terms["feature"] = adversarial.feature_matching_loss(real, fake)
        return terms, (out, est, new_extra, est_spec)

    def _weighted(self, terms) -> jax.Array:
        lc = self.config.loss
        weights = {
            "mel": lc.mel_weight,
            "stft": lc.stft_weight,
            "adv": lc.adv_weight,
            "feature": lc.feature_weight,
            "kl": lc.get("kl_weight", 0.0),
        }
        return sum(weights[k] * v for k, v in terms.items())

    # ---- the step ----------------------------------------------------------------------
    def _step_key(self, state):
        return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

    def train_step_fn(self, trained, constants, frozen, batch, *, variant):
        """The generator update, then (adversarial) the discriminator update on the same
        reconstruction and spectra; one program, so nothing is computed twice."""
        ref_spec = self._ref_spectra(batch, variant)
        state, est, est_spec, metrics = self._gen_update(trained, batch, ref_spec, variant)
        if variant:
            state, disc_metrics = self._disc_update(state, est, batch, (ref_spec, est_spec))
            metrics |= disc_metrics
        return state, metrics

    def _gen_update(self, state, batch, ref_spec, adversarial_on: bool):
        gen, step, key = state["gen"], state["step"], self._step_key(state)
        extra = {"batch_stats": gen["batch_stats"]} if self.uses_batch_stats else {}

        def loss_fn(params):
            terms, aux = self._gen_terms(
                params, extra, state["disc"]["params"], batch, key, adversarial_on, ref_spec
            )
            return self._weighted(terms), (terms, aux)

        (total, (terms, (out, est, new_extra, est_spec))), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(gen["params"])
        params, opt, applied, skipped, metrics = self.update(
            "model", self.gen_tx, self.gen_lr, gen["params"], gen["opt"], grads,
            state["skipped_gen"], step,
        )  # fmt: skip
        new_gen = {"params": params, "opt": opt}
        if "ema" in gen:
            new_gen["ema"] = optim.ema_update(gen["ema"], params, self.config.train.ema_decay)
        if self.uses_batch_stats:
            new_gen["batch_stats"] = jax.tree.map(
                lambda n, o: jnp.where(applied, n, o), new_extra["batch_stats"], gen["batch_stats"]
            )
        metrics |= {f"loss/{k}": v for k, v in terms.items()} | {"loss/total": total}
        metrics |= _latent_metrics(out)
        state = dict(state, gen=new_gen, step=step + 1, skipped_gen=skipped)
        sg = jax.lax.stop_gradient
        return state, sg(est), jax.tree.map(sg, est_spec), metrics

    def _disc_update(self, state, est, batch, spectra):
        """spectra: (real, reconstructed) `dsp.stfts` already computed."""
        ref = batch["audio"] * batch["mask"]
        ref_spec, est_spec = spectra

        def loss_fn(params):
            real = self.disc.apply({"params": params}, ref, ref_spec)
            fake = self.disc.apply({"params": params}, est, est_spec)
            return adversarial.lsgan_discriminator_loss(real, fake)

        disc = state["disc"]
        loss, grads = jax.value_and_grad(loss_fn)(disc["params"])
        params, opt, _, skipped, metrics = self.update(
            "disc", self.disc_tx, self.disc_lr, disc["params"], disc["opt"], grads,
            state["skipped_disc"], state["step"] - 1,
        )  # fmt: skip
        state = dict(state, disc={"params": params, "opt": opt}, skipped_disc=skipped)
        return state, metrics | {"loss/disc": loss}

    # ---- diagnostics on log steps ------------------------------------------------------
    def _term_grad_norms(self, state, batch, *, adversarial_on: bool):
        """Gradient norm of each weighted loss term alone."""
        gen, key = state["gen"], self._step_key(state)
        extra = {"batch_stats": gen["batch_stats"]} if self.uses_batch_stats else {}
        names = ["mel", "stft"] + (["kl"] if self.model.bottleneck_kind == "vae" else [])
        names += ["adv", "feature"] if adversarial_on else []
        ref_spec = self._ref_spectra(batch, adversarial_on)
        disc_params = state["disc"]["params"]
        norms = {}
        for name in names:

            def one(params, name=name):
                terms, _ = self._gen_terms(
                    params, extra, disc_params, batch, key, adversarial_on, ref_spec
                )
                return self._weighted({name: terms[name]})

            norms[f"grad_norm/{name}"] = jnp.sqrt(
                sum(
                    jnp.sum(g.astype(jnp.float32) ** 2)
                    for g in jax.tree.leaves(jax.grad(one)(gen["params"]))
                )
            )
        return norms

    def log_metrics(self, state: dict, batch: dict, step: int) -> dict:
        """The gradient norm of each loss term alone (a diagnostic, on log steps only, when
        train.term_grad_norms is set)."""
        if not self.config.train.get("term_grad_norms", False):
            return {}
        on = self.adversarial_on(step)
        if on not in self._grad_norm_jits:
            s = self.shardings
            parts = {k: s[k] for k in ("step", "rng", "gen", "disc")}
            self._grad_norm_jits[on] = jax.jit(
                lambda st, b: self._term_grad_norms(st, b, adversarial_on=on),
                in_shardings=(parts, self._batch_shardings(self.batch_keys)),
                out_shardings=parallel.replicated(self.mesh),
            )
        parts = {k: state[k] for k in ("step", "rng", "gen", "disc")}
        with jax.set_mesh(self.mesh):
            return self._grad_norm_jits[on](parts, {k: batch[k] for k in self.batch_keys})

    # ---- validation --------------------------------------------------------------------
    def eval_step_fn(self, variables, frozen, batch):
        audio, mask = batch["audio"], batch["mask"]
        out = self.model.apply(variables, audio, train=False)
        est = out["wav"] * mask
        ref = audio * mask
        ones = jnp.ones(audio.shape[:1], jnp.float32)
        metrics = {
            "mel_distance": dsp.mel_distance(
                ref, est, sample_rate=self.config.sample_rate, mask=mask
            ),
            "si_sdr": si_sdr(ref, est, mask=mask),
        }
        return {k: (v, ones) for k, v in metrics.items()}, est

    def eval_out_shardings(self):
        return (None, parallel.batch_sharding(self.mesh, 2))

    def eval_samples(self, writer, step: int, local: dict, est, state: dict) -> dict:
        """Audio and spectrograms of the first examples, on sample steps."""
        if step % self.config.train.sample_every:
            return {}
        audio, est = local["audio"], parallel.to_host(est)
        sample_rate = self.config.sample_rate
        for j in range(min(2, audio.shape[0])):
            writer.audio(step, f"samples/{j}/original", audio[j], sample_rate)
            writer.audio(step, f"samples/{j}/reconstruction", est[j], sample_rate)
            writer.spectrogram(
                step,
                f"spectrogram/{j}",
                {"original": audio[j], "reconstruction": est[j]},
                sample_rate,
            )
        return {}


def _bottleneck_terms(out: dict, mask, hop: int) -> dict:
    """The bottleneck's own loss terms (per frame in `out`) averaged over the real frames."""
    terms = {}
    if "kl" in out:
        fmask = dsp.frame_mask(mask, hop, out["kl"].shape[1])
        terms["kl"] = jnp.sum(out["kl"] * fmask) / jnp.maximum(jnp.sum(fmask), 1.0)
    return terms


def _latent_metrics(out: dict) -> dict:
    z = out["z"]
    return {
        "latent/channel_mean": jnp.mean(z, axis=(0, 1)),
        "latent/channel_std": jnp.std(z, axis=(0, 1)),
        "latent/frame_rms": jnp.mean(jnp.sqrt(jnp.mean(z**2, axis=-1) + 1e-12)),
        "latent/sigma_mean": jnp.mean(out["sigma"]),
    }
