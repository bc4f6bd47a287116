"""Stage 1 trainer: the normalized noisy autoencoder with its GAN discriminators.

The state is a plain dict (readable checkpoints, strict restores):
  step, rng, skipped_gen, skipped_disc,
  gen: {params, opt, [ema], [batch_stats]},  disc: {params, opt}.
A train step is one jitted program: the generator update (reconstruction, spectral and
adversarial losses), then the discriminator update on the same reconstruction (the generator
runs once). Each STFT of the real and of the reconstructed audio is computed once per step
(`spectral.stfts`) and shared by the mel loss, the STFT loss and the STFT discriminators of both
updates. Whether the adversarial terms are on is decided on the host from the global step, so
each of the two variants compiles once and neither wastes work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from f3_jax import checkpoint, parallel
from f3_jax.losses import adversarial, spectral
from f3_jax.metrics.audio import si_sdr
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.models.discriminators import Discriminators
from f3_jax.trainers import common

BATCH_KEYS = ("audio", "mask")


class AutoencoderTrainer:
    """Builds the stage-1 state and its jitted step functions for one mesh."""

    def __init__(self, config, mesh):
        self.config = config
        self.mesh = mesh
        self.model = Autoencoder.from_config(config)
        self.disc = Discriminators.from_config(config)
        o, t = config.optim, config.train
        self.gen_lr = common.learning_rate_schedule(o.gen_lr, o.warmup_steps, t.steps, o.schedule)
        disc_lr = common.learning_rate_schedule(o.disc_lr, o.warmup_steps, t.steps, o.schedule)
        self.gen_tx = common.adamw(self.gen_lr, o)
        self.disc_tx = common.adamw(disc_lr, o)
        self.uses_batch_stats = config.bottleneck.norm == "batch"
        self.crop = round(config.data.crop_seconds * config.sample_rate)
        self._abstract, self.shardings = common.state_layout(self._boxed_state, mesh)
        self._compile()

    # ---- state -------------------------------------------------------------------------
    def _boxed_state(self) -> dict:
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

    def initial_state(self) -> dict:
        """A freshly initialized state on this mesh (compiled on first use)."""
        return common.sharded_init(self._boxed_state, self.mesh, self.shardings)

    def abstract_state(self) -> dict:
        """The state's shapes on this mesh's shardings: the target of a restore."""
        return common.abstract_like(self.shardings, self._abstract)

    def logical_state(self) -> dict:
        """The state's shapes with each parameter's logical axis names (nn.LogicallyPartitioned
        boxes), from tracing alone: what memory planning reads."""
        return jax.eval_shape(self._boxed_state)

    def lower_train_step(self, batch: dict, step: int = 0, **lower_kwargs):
        """The train step at global `step` for `batch` (arrays or ShapeDtypeStructs) lowered
        from the abstract state: compile it for its memory and cost analysis, or lower it for
        another platform (lowering_platforms=...)."""
        state = self.abstract_state()
        batch = {k: batch[k] for k in BATCH_KEYS}
        with common.mesh_context(self.mesh):
            traced = self._steps[self.adversarial_on(step)].trace(
                state["gen"], state["disc"], _counters(state), batch
            )
            return traced.lower(**lower_kwargs)

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
        return spectral.stfts(ref, self._stft_sizes(adversarial_on))

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
        est_spec = spectral.stfts(est, self._stft_sizes(adversarial_on))
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
        }
        return sum(weights[k] * v for k, v in terms.items())

    # ---- steps -------------------------------------------------------------------------
    def _step_key(self, rng_data, step):
        return jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)

    def _train_step(self, gen, disc, counters, batch, *, adversarial_on: bool):
        """The generator update, then (adversarial_on) the discriminator update on the same
        reconstruction and spectra; one program, so nothing is computed twice."""
        ref_spec = self._ref_spectra(batch, adversarial_on)
        gen, counters, est, est_spec, metrics = self._gen_step(
            gen, disc["params"], counters, batch, ref_spec, adversarial_on=adversarial_on
        )
        if adversarial_on:
            disc, counters, disc_metrics = self._disc_step(
                disc, counters, est, batch, (ref_spec, est_spec)
            )
            metrics |= disc_metrics
        return gen, disc, counters, metrics

    def _gen_step(self, gen, disc_params, counters, batch, ref_spec, *, adversarial_on: bool):
        step = counters["step"]
        key = self._step_key(counters["rng"], step)
        extra = {"batch_stats": gen["batch_stats"]} if self.uses_batch_stats else {}

        def loss_fn(params):
            terms, aux = self._gen_terms(
                params, extra, disc_params, batch, key, adversarial_on, ref_spec
            )
            return self._weighted(terms), (terms, aux)

        (total, (terms, (out, est, new_extra, est_spec))), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(gen["params"])
        params, opt, applied, gnorm = common.guarded_update(
            self.gen_tx, gen["params"], gen["opt"], grads
        )
        new_gen = {"params": params, "opt": opt}
        if "ema" in gen:
            new_gen["ema"] = common.ema_update(gen["ema"], params, self.config.train.ema_decay)
        if self.uses_batch_stats:
            new_gen["batch_stats"] = jax.tree.map(
                lambda n, o: jnp.where(applied, n, o), new_extra["batch_stats"], gen["batch_stats"]
            )
        z = out["z"]
        metrics = {f"loss/{k}": v for k, v in terms.items()} | {
            "loss/gen_total": total,
            "grad_norm/gen": gnorm,
            "skipped/gen": 1 - applied.astype(jnp.int32),
            "skipped/gen_total": counters["skipped_gen"] + 1 - applied.astype(jnp.int32),
            "lr/gen": self.gen_lr(step),
            "latent/channel_mean": jnp.mean(z, axis=(0, 1)),
            "latent/channel_std": jnp.std(z, axis=(0, 1)),
            "latent/frame_rms": jnp.mean(jnp.sqrt(jnp.mean(z**2, axis=-1) + 1e-12)),
            "latent/sigma_mean": jnp.mean(out["sigma"]),
        }
        skipped = 1 - applied.astype(jnp.int32)
        counters = dict(counters, step=step + 1, skipped_gen=counters["skipped_gen"] + skipped)
        sg = jax.lax.stop_gradient
        return new_gen, counters, sg(est), jax.tree.map(sg, est_spec), metrics

    def _disc_step(self, disc, counters, est, batch, spectra=(None, None)):
        """spectra: (real, reconstructed) `spectral.stfts` already computed, or None each."""
        ref = batch["audio"] * batch["mask"]
        ref_spec, est_spec = spectra

        def loss_fn(params):
            real = self.disc.apply({"params": params}, ref, ref_spec)
            fake = self.disc.apply({"params": params}, est, est_spec)
            return adversarial.lsgan_discriminator_loss(real, fake)

        loss, grads = jax.value_and_grad(loss_fn)(disc["params"])
        params, opt, applied, gnorm = common.guarded_update(
            self.disc_tx, disc["params"], disc["opt"], grads
        )
        skipped = 1 - applied.astype(jnp.int32)
        metrics = {"loss/disc": loss, "grad_norm/disc": gnorm, "skipped/disc": skipped}
        counters = dict(counters, skipped_disc=counters["skipped_disc"] + skipped)
        return {"params": params, "opt": opt}, counters, metrics

    def _term_grad_norms(self, gen, disc_params, counters, batch, *, adversarial_on):
        """Gradient norm of each weighted loss term alone (a diagnostic, on log steps only)."""
        key = self._step_key(counters["rng"], counters["step"])
        extra = {"batch_stats": gen["batch_stats"]} if self.uses_batch_stats else {}
        names = ["mel", "stft"] + (["adv", "feature"] if adversarial_on else [])
        ref_spec = self._ref_spectra(batch, adversarial_on)
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

    def _eval_step(self, variables, batch):
        audio, mask = batch["audio"], batch["mask"]
        out = self.model.apply(variables, audio, train=False)
        est = out["wav"] * mask
        ref = audio * mask
        ones = jnp.ones(audio.shape[:1], jnp.float32)
        metrics = {
            "mel_distance": spectral.mel_distance(
                ref, est, sample_rate=self.config.sample_rate, mask=mask
            ),
            "si_sdr": si_sdr(ref, est, mask=mask),
        }
        return {k: (v, ones) for k, v in metrics.items()}, est

    def _compile(self) -> None:
        s = self.shardings
        rep = parallel.replicated(self.mesh)
        batch_s = {k: parallel.batch_sharding(self.mesh, 2) for k in BATCH_KEYS}
        wav_s = parallel.batch_sharding(self.mesh, 2)
        self._steps = {
            on: jax.jit(
                functools.partial(self._train_step, adversarial_on=on),
                in_shardings=(s["gen"], s["disc"], rep, batch_s),
                out_shardings=(s["gen"], s["disc"], rep, rep),
                donate_argnums=(0, 1, 2),
            )
            for on in (False, True)
        }
        self._grad_norms = {
            on: jax.jit(
                functools.partial(self._term_grad_norms, adversarial_on=on),
                in_shardings=(s["gen"], s["disc"]["params"], rep, batch_s),
                out_shardings=rep,
            )
            for on in (False, True)
        }
        var_s = self._inference_shardings()
        self._eval_jit = jax.jit(
            self._eval_step, in_shardings=(var_s, batch_s), out_shardings=(None, wav_s)
        )

    def _inference_shardings(self):
        s = self.shardings["gen"]
        var_s = {"params": s["params"]}
        if self.uses_batch_stats:
            var_s["batch_stats"] = s["batch_stats"]
        return var_s

    # ---- public step API used by the train loop ----------------------------------------
    total_loss_key = "loss/gen_total"
    headline_metrics = ("mel_distance", "si_sdr")  # the validation log line

    def host_batch(self, local: dict) -> dict:
        return {k: local[k] for k in BATCH_KEYS}

    def adversarial_on(self, step: int) -> bool:
        return step >= self.config.train.adversarial_start

    def train_step(self, state: dict, batch: dict, step: int) -> tuple[dict, dict]:
        """One generator update and (once adversarial training started) one discriminator update."""
        on = self.adversarial_on(step)
        batch = {k: batch[k] for k in BATCH_KEYS}
        with jax.set_mesh(self.mesh):
            gen, disc, counters, metrics = self._steps[on](
                state["gen"], state["disc"], _counters(state), batch
            )
        return dict(state, gen=gen, disc=disc, **counters), metrics

    def grad_norms(self, state: dict, batch: dict, step: int) -> dict:
        on = self.adversarial_on(step)
        batch = {k: batch[k] for k in BATCH_KEYS}
        with jax.set_mesh(self.mesh):
            return self._grad_norms[on](
                state["gen"], state["disc"]["params"], _counters(state), batch
            )

    def step_flops(self, state: dict, batch: dict, step: int) -> float:
        """Per-device FLOPs of one train step: matrix products and convolutions counted from
        its jaxpr (`common.jaxpr_flops`), generator and discriminator updates, divided by the
        mesh's devices."""
        on = self.adversarial_on(step)
        batch = {k: batch[k] for k in BATCH_KEYS}
        fn = functools.partial(self._train_step, adversarial_on=on)
        return common.step_flops(
            fn, self.mesh, state["gen"], state["disc"], _counters(state), batch
        )

    def step_phases(self) -> list[tuple[int, float]]:
        """(first step, relative cost) of each kind of step ahead: the generator-only steps
        and, from train.adversarial_start, the steps with discriminators (FLOPs from the
        traced steps; nothing is compiled)."""
        start = self.config.train.adversarial_start
        if start <= 0 or start >= self.config.train.steps:
            return [(0, 1.0)]
        state = self.abstract_state()
        shape = (self.config.train.batch_size, self.crop)
        batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32) for k in BATCH_KEYS}
        costs = [self.step_flops(state, batch, step) for step in (0, start)]
        return [(0, 1.0), (start, costs[1] / max(costs[0], 1.0))]

    def parameter_count(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self._abstract["gen"]["params"]))

    def inference_variables(self, state: dict) -> dict:
        """Generator variables for eval and export: EMA weights when kept, else raw."""
        gen = state["gen"]
        variables = {"params": gen.get("ema", gen["params"])}
        if self.uses_batch_stats:
            variables["batch_stats"] = gen["batch_stats"]
        return variables

    def log_metrics(self, state: dict, batch: dict, step: int) -> dict:
        """Diagnostics for log steps: the gradient norm of each loss term alone."""
        return self.grad_norms(state, batch, step)

    def eval_step(self, state: dict, batch: dict) -> tuple[dict, jax.Array]:
        """Per-example (value, weight) pairs of each validation metric, and the reconstructions."""
        batch = {k: batch[k] for k in BATCH_KEYS}
        with jax.set_mesh(self.mesh):
            return self._eval_jit(self.inference_variables(state), batch)

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

    def export(self, workdir: str, state: dict, step: int) -> None:
        """WORKDIR/export: the generator's inference weights and the config."""
        self.export_later(workdir, state, step)()

    def export_later(self, workdir: str, state: dict, step: int) -> Callable[[], None]:
        """Fetches the export's weights to the host now; the returned call writes the files
        (so a background thread can, while the next steps run)."""
        variables = parallel.to_host(self.inference_variables(state))
        return functools.partial(checkpoint.write_export, workdir, variables, self.config, step)


COUNTER_KEYS = ("step", "rng", "skipped_gen", "skipped_disc")


def _counters(state: dict) -> dict:
    return {k: state[k] for k in COUNTER_KEYS}
