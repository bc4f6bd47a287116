"""Stage 3 trainer: the patch flow head and the stop head on the frozen LLM (teacher forcing).

Frozen and outside the state: the stage-1 autoencoder, the stage-2 encoder, downsampler and
adapter, and the LLM. For each clip the LLM reads [transcript] [llm.instruction] [adapter
embeddings of the clip's patches]; the flow head learns patch t from the LLM state before it
and the downsampled representation of patch t-1; the stop head learns, from the state after
the last patch, that the clip ends there (clips cut by the crop have no transcript and no end,
so they train the flow head only). The state is
  step, rng, skipped, params: {flow, stop}, opt.
With config.data.latent_cache, training batches hold cached latents (LATENT_KEYS) and their step
skips the autoencoder; validation stays on audio.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from f3_jax import checkpoint, parallel, storage
from f3_jax.config import ConfigError
from f3_jax.data import latent_records
from f3_jax.losses import spectral
from f3_jax.losses.flow_matching import (
    flow_matching_loss,
    interpolate,
    sample_flow_time,
    stop_loss,
)
from f3_jax.models.adapter import stack_patches
from f3_jax.models.flow_head import PatchFlowHead, StopHead
from f3_jax.models.llm import LLM
from f3_jax.models.llm_loaders import load_llm
from f3_jax.sampling import sample_flow
from f3_jax.trainers import common, frozen

BATCH_KEYS = ("audio", "mask", "text_ids", "text_mask")
LATENT_KEYS = ("latents", "frame_mask", "text_ids", "text_mask")  # data.latent_cache batches
TRAINED_KEYS = ("step", "rng", "skipped", "params", "opt")


def gaussian_velocity(x_t, t, mean, var):
    """Exact rectified-flow velocity when the data are N(mean, var) per channel (a baseline)."""
    t = t[..., None, None]
    spread = (1 - t) ** 2 + t**2 * var
    return mean + (t * var - (1 - t)) / spread * (x_t - t * mean)


class FlowTrainer:
    """Builds the stage-3 state and its jitted step functions for one mesh."""

    total_loss_key = "loss/total"
    headline_metrics = (
        "flow/loss",
        "flow/gaussian_baseline",
        "stop/accuracy",
        "flow/teacher_forced_mel_distance",
    )  # the validation log line

    def __init__(self, config, mesh, *, abstract_frozen=False, stand_ins=None):
        """abstract_frozen, stand_ins: see f3_jax.trainers.create."""
        self.config = config
        self.mesh = mesh
        abstract = abstract_frozen or common.is_abstract(mesh)
        stand_ins = stand_ins or {}
        ac, rc = config.autoencoder, config.representation
        self.ae = frozen.FrozenAutoencoder(
            ac.workdir,
            config.sample_rate,
            mesh,
            dtype=ac.dtype,
            param_dtype=ac.param_dtype,
            abstract=abstract,
            stand_in=stand_ins.get("autoencoder"),
        )
        lc = config.llm
        self.llm_config, self.llm_params, self.text_tokenizer = load_llm(
            lc.path,
            mesh=mesh,
            param_dtype=lc.param_dtype,
            dtype=lc.dtype,
            scan_layers=lc.scan_layers,
            abstract=abstract,
        )
        self.llm = LLM(self.llm_config)
        self.rep = frozen.FrozenRepresentation(
            rc.workdir,
            mesh,
            self.llm_config.hidden_size,
            dtype=rc.dtype,
            param_dtype=rc.param_dtype,
            abstract=abstract,
            stand_in=stand_ins.get("representation"),
            latent_dim=self.ae.latent_dim,
        )
        self._check_same_autoencoder()
        self.patch = self.rep.patch_frames
        self.instruction_ids = np.asarray(self.text_tokenizer.encode(lc.instruction), np.int32)
        fh = config.flow_head
        self.head = PatchFlowHead(
            fh.width,
            fh.depth,
            self.patch,
            self.ae.latent_dim,
            fh.time_embed_dim,
            fh.cond_drop_prob,
            dtype=jnp.dtype(config.compute_dtype),
            remat=fh.remat,
        )
        self.stop = StopHead(fh.stop_hidden, dtype=jnp.dtype(config.compute_dtype))
        o = config.optim
        self.lr = common.learning_rate_schedule(
            o.lr, o.warmup_steps, config.train.steps, o.schedule
        )
        self.tx = common.adamw(self.lr, o)
        self.crop = round(config.data.crop_seconds * config.sample_rate)
        self._abstract, self.shardings = common.state_layout(self._boxed_state, mesh)
        self._generator = None
        self._compile()

    def _check_same_autoencoder(self) -> None:
        if self.rep.export_dir is None or self.ae.digest is None:  # stand-ins: nothing to check
            return
        copy = storage.as_path(self.rep.export_dir, "autoencoder", "weights.safetensors")
        if copy.exists() and frozen.file_digest(copy) != self.ae.digest:
            raise ConfigError(
                f"config.autoencoder.workdir={self.config.autoencoder.workdir!r} is not the "
                f"autoencoder stage 2 ({self.config.representation.workdir}) was trained on"
            )

    # ---- state -------------------------------------------------------------------------
    def _boxed_state(self) -> dict:
        key = jax.random.key(self.config.seed)
        k_flow, k_stop, k_drop = jax.random.split(key, 3)
        x = jnp.zeros((1, 1, self.patch, self.ae.latent_dim), jnp.float32)
        h = jnp.zeros((1, 1, self.llm_config.hidden_size), jnp.float32)
        d = jnp.zeros((1, 1, self.rep.downsampler.width), jnp.float32)
        flow = self.head.init({"params": k_flow, "dropout": k_drop}, x, jnp.zeros((1, 1)), h, d)
        params = {"flow": flow["params"], "stop": self.stop.init(k_stop, h)["params"]}
        return {
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(key),
            "skipped": jnp.zeros((), jnp.int32),
            "params": params,
            "opt": self.tx.init(params),
        }

    def initial_state(self) -> dict:
        return common.sharded_init(self._boxed_state, self.mesh, self.shardings)

    def logical_state(self) -> dict:
        """The state's shapes with each parameter's logical axis names (nn.LogicallyPartitioned
        boxes), from tracing alone: what memory planning reads."""
        return jax.eval_shape(self._boxed_state)

    def lower_train_step(self, batch: dict, step: int = 0, **lower_kwargs):
        """The train step for `batch` lowered from shapes (see RepresentationTrainer's)."""
        state = self.abstract_state()
        trained = {k: state[k] for k in TRAINED_KEYS}
        keys = _keys_of(batch)
        batch = {k: batch[k] for k in keys}
        with common.mesh_context(self.mesh):
            traced = self._step_jit[keys].trace(trained, self.frozen(), batch)
            return traced.lower(**lower_kwargs)

    def abstract_state(self) -> dict:
        return common.abstract_like(self.shardings, self._abstract)

    def frozen(self) -> dict:
        return {"ae": self.ae.variables, "rep": self.rep.params, "llm": self.llm_params}

    @functools.cached_property
    def latent_cache(self) -> latent_records.LatentCache | None:
        """The cache of this autoencoder under data.latent_cache, checked (None when off).

        Read by train.py only, so that evaluating a run needs no cache.
        """
        root = self.config.data.get("latent_cache", "")
        return latent_records.open_cache(root, self.ae.digest, self.ae.hop) if root else None

    # ---- teacher forcing ---------------------------------------------------------------
    def _teacher_forcing(self, fz, batch) -> dict:
        """Targets and conditions of every patch (no gradients: all frozen)."""
        if "latents" in batch:  # from the latent cache
            z, fmask = batch["latents"], batch["frame_mask"]
        else:
            z, fmask = self.ae.latents(fz["ae"], batch["audio"], batch["mask"])
        r, _ = self.rep.encode(fz["rep"], z, fmask)
        d, pmask, embeds = self.rep.patches(fz["rep"], r, fmask)
        b, n = pmask.shape
        x1, _ = stack_patches(z, fmask, self.patch)
        x1 = x1.reshape(b, n, self.patch, self.ae.latent_dim)
        text = self.llm.apply(fz["llm"], batch["text_ids"], method=LLM.embed)
        instr = self.llm.apply(fz["llm"], jnp.asarray(self.instruction_ids)[None], method=LLM.embed)
        instr = jnp.broadcast_to(instr, (b,) + instr.shape[1:])
        seq = jnp.concatenate([text, instr, embeds.astype(text.dtype)], axis=1)
        mask = jnp.concatenate(
            [batch["text_mask"], jnp.ones(instr.shape[:2]), pmask], axis=1
        ).astype(jnp.float32)
        hidden = self.llm.apply(
            fz["llm"], inputs_embeds=seq, attention_mask=mask, return_logits=False
        )
        start = text.shape[1] + instr.shape[1] - 1  # the state before patch 0
        states = jax.lax.stop_gradient(hidden["hidden"][:, start : start + n + 1])
        prev = jnp.concatenate([jnp.zeros_like(d[:, :1]), d[:, :-1]], axis=1)
        count = jnp.sum(pmask, axis=1)
        whole = jnp.max(batch["text_mask"], axis=1)  # utterance crops keep text iff uncut
        index = jnp.arange(n + 1)[None, :]
        return {
            "z": z,
            "x1": x1,
            "pmask": pmask,
            "states": states,
            "prev": jax.lax.stop_gradient(prev),
            "stop_target": (index == count[:, None]).astype(jnp.float32),
            "stop_mask": (index <= count[:, None]) & (whole[:, None] > 0),
        }

    def _velocity(self, params, tf, key=None, train=False):
        rngs = {"dropout": key} if key is not None else None

        def v(x_t, t, drop=None):
            return self.head.apply(
                {"params": params["flow"]},
                x_t,
                t,
                tf["states"][:, :-1],
                tf["prev"],
                train=train,
                drop_condition=drop,
                rngs=rngs,
            )

        return v

    # ---- steps -------------------------------------------------------------------------
    def _train_step(self, trained, fz, batch):
        tf = self._teacher_forcing(fz, batch)
        key = jax.random.fold_in(jax.random.wrap_key_data(trained["rng"]), trained["step"])
        k_flow, k_drop = jax.random.split(key)
        fl = self.config.flow_loss

        def loss_fn(params):
            flow = flow_matching_loss(
                self._velocity(params, tf, k_drop, train=True),
                tf["x1"],
                tf["pmask"] > 0,
                k_flow,
                time_schedule=fl.time_schedule,
                logit_mean=fl.logit_mean,
                logit_std=fl.logit_std,
            )
            logits = self.stop.apply({"params": params["stop"]}, tf["states"])
            stop = stop_loss(logits, tf["stop_target"], tf["stop_mask"], fl.stop_pos_weight)
            return flow + fl.stop_weight * stop, (flow, stop)

        (total, (flow, stop)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained["params"])
        params, opt, applied, gnorm = common.guarded_update(
            self.tx, trained["params"], trained["opt"], grads
        )
        skipped = 1 - applied.astype(jnp.int32)
        metrics = {
            "loss/total": total,
            "loss/flow": flow,
            "loss/stop": stop,
            "grad_norm/total": gnorm,
            "skipped/step": skipped,
            "skipped/total": trained["skipped"] + skipped,
            "lr": self.lr(trained["step"]),
        }
        new = dict(
            trained,
            params=params,
            opt=opt,
            step=trained["step"] + 1,
            skipped=trained["skipped"] + skipped,
        )
        return new, metrics

    def _per_example_flow(self, velocity, tf, key):
        """Per-example flow loss (mean over its patches) and patch counts."""
        x1, pmask = tf["x1"].astype(jnp.float32), tf["pmask"]
        k_t, k_n = jax.random.split(key)
        fl = self.config.flow_loss
        t = sample_flow_time(k_t, pmask.shape, fl.time_schedule, fl.logit_mean, fl.logit_std)
        noise = jax.random.normal(k_n, x1.shape)
        err = jnp.mean(jnp.square(velocity(interpolate(noise, x1, t), t) - (x1 - noise)), (2, 3))
        count = jnp.sum(pmask, axis=1)
        return jnp.sum(err * pmask, axis=1) / jnp.maximum(count, 1.0), count

    def _eval_step(self, params, fz, batch):
        tf = self._teacher_forcing(fz, batch)
        key = jax.random.key(self.config.seed + 1)  # the same noise at every validation
        pm = tf["pmask"][..., None, None]
        n_frames = jnp.maximum(jnp.sum(pm), 1.0) * self.patch
        mean = jnp.sum(tf["x1"] * pm, axis=(0, 1, 2)) / n_frames
        var = jnp.sum(jnp.square(tf["x1"] - mean) * pm, axis=(0, 1, 2)) / n_frames
        baseline = lambda x_t, t: gaussian_velocity(x_t, t, mean, var)
        flow, count = self._per_example_flow(self._velocity(params, tf), tf, key)
        base, _ = self._per_example_flow(baseline, tf, key)
        logits = self.stop.apply({"params": params["stop"]}, tf["states"])
        hit = ((logits > 0) == (tf["stop_target"] > 0)) * tf["stop_mask"]
        stop_n = jnp.sum(tf["stop_mask"], axis=1)
        samples = self._teacher_forced_samples(params, tf, key)
        mse = jnp.mean(jnp.square(samples - tf["x1"]), (2, 3))
        mean_mse = jnp.mean(jnp.square(mean - tf["x1"]), (2, 3))
        est = self._decode_patches(fz, samples, batch["mask"])
        ref = batch["audio"] * batch["mask"]
        mel = spectral.mel_distance(
            ref, est, sample_rate=self.config.sample_rate, mask=batch["mask"]
        )
        ones = jnp.ones_like(count)
        per_patch = lambda x: jnp.sum(x * tf["pmask"], 1) / jnp.maximum(count, 1.0)
        metrics = {
            "flow/loss": (flow, count),
            "flow/gaussian_baseline": (base, count),
            "flow/teacher_forced_latent_mse": (per_patch(mse), count),
            "flow/mean_patch_latent_mse": (per_patch(mean_mse), count),
            "flow/teacher_forced_mel_distance": (mel, ones),
            "stop/accuracy": (jnp.sum(hit, 1) / jnp.maximum(stop_n, 1.0), stop_n),
        }
        return metrics, est

    def _teacher_forced_samples(self, params, tf, key):
        """Each patch sampled from its teacher-forced condition (B, N, P, D)."""
        sp = self.config.sampling
        velocity = self._velocity(params, tf)
        shape = tf["x1"].shape
        flat = lambda x: x.reshape(shape)

        def v(x, t, drop):  # the sampler's batch axis is (B*N) patches
            b = shape[0] * shape[1]
            half = x.shape[0] // b  # 2 with guidance (cond; uncond), else 1
            xs = x.reshape(half, *shape)
            ts = t.reshape(half, shape[0], shape[1])
            ds = drop.reshape(half, shape[0], shape[1])
            out = jnp.stack([velocity(xs[i], ts[i], ds[i]) for i in range(half)])
            return out.reshape(x.shape)

        noise = jax.random.normal(jax.random.fold_in(key, 7), (shape[0] * shape[1], *shape[2:]))
        x = sample_flow(
            v,
            noise,
            num_steps=sp.num_steps,
            method=sp.method,
            guidance_scale=float(sp.guidance_scale),
            temperature=float(sp.temperature),
        )
        return flat(x)

    def _decode_patches(self, fz, patches, mask):
        b, n = patches.shape[:2]
        z = patches.reshape(b, n * self.patch, self.ae.latent_dim)
        wav = self.ae.decode(fz["ae"], z)
        length = mask.shape[1]
        wav = jnp.pad(wav, ((0, 0), (0, max(0, length - wav.shape[1]))))[:, :length]
        return wav * mask

    def _compile(self) -> None:
        s = self.shardings
        rep = parallel.replicated(self.mesh)
        batch_s = {k: parallel.batch_sharding(self.mesh, 2) for k in BATCH_KEYS}
        trained_s = {k: s[k] for k in TRAINED_KEYS}
        frozen_s = jax.tree.map(lambda x: x.sharding, self.frozen())
        self._step_jit = {
            keys: jax.jit(
                self._train_step,
                in_shardings=(trained_s, frozen_s, _batch_shardings(self.mesh, keys)),
                out_shardings=(trained_s, rep),
                donate_argnums=(0,),
            )
            for keys in (BATCH_KEYS, LATENT_KEYS)
        }
        self._eval_jit = jax.jit(self._eval_step, in_shardings=(s["params"], frozen_s, batch_s))

    # ---- public step API used by the train loop ----------------------------------------
    def host_batch(self, local: dict) -> dict:
        return common.text_batch(local, self.text_tokenizer, self.config.llm.max_text_tokens)

    def train_step(self, state: dict, batch: dict, step: int) -> tuple[dict, dict]:
        trained = {k: state[k] for k in TRAINED_KEYS}
        keys = _keys_of(batch)
        batch = {k: batch[k] for k in keys}
        with jax.set_mesh(self.mesh):
            trained, metrics = self._step_jit[keys](trained, self.frozen(), batch)
        return dict(state, **trained), metrics

    def log_metrics(self, state: dict, batch: dict, step: int) -> dict:
        return {}

    def step_phases(self) -> list[tuple[int, float]]:
        """Every step costs the same here: one phase."""
        return [(0, 1.0)]

    def eval_step(self, state: dict, batch: dict):
        batch = {k: batch[k] for k in BATCH_KEYS}
        with jax.set_mesh(self.mesh):
            return self._eval_jit(state["params"], self.frozen(), batch)

    def generator(self):
        """A Generator over the trainer's frozen modules (built once, reused every eval)."""
        if self._generator is None:
            from f3_jax.generation import Generator

            self._generator = Generator(
                self.config,
                self.ae,
                self.rep,
                self.llm_config,
                self.llm_params,
                self.text_tokenizer,
                self.mesh,
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
        gen = self.generator()
        rtfs = []
        for j, text in enumerate(texts[: self.config.eval.num_generate]):
            out = gen.generate(parallel.to_host(state["params"]), text, seed=j)
            writer.audio(step, f"generated/{j}", out["audio"], sr)
            writer.text(step, f"generated/{j}/text", text)
            rtfs.append(out["x_real_time"])
        return {"generation/x_real_time": float(np.mean(rtfs))} if rtfs else {}

    def inference_variables(self, state: dict) -> dict:
        return {"params": state["params"]}

    def export(self, workdir: str, state: dict, step: int) -> None:
        """WORKDIR/export: the heads, the config, and copies of the frozen stages 1 and 2."""
        self.export_later(workdir, state, step)()

    def export_later(self, workdir: str, state: dict, step: int) -> Callable[[], None]:
        """Fetches the weights to the host now; the returned call writes the files."""
        variables = parallel.to_host(self.inference_variables(state))

        def write() -> None:
            checkpoint.write_export(workdir, variables, self.config, step)
            if jax.process_index() == 0:
                out = os.path.join(workdir, checkpoint.EXPORT_DIR)
                frozen.copy_export(self.ae.export_dir, os.path.join(out, "autoencoder"))
                frozen.copy_export(self.rep.export_dir, os.path.join(out, "representation"))

        return write

    def parameter_count(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self._abstract["params"]))

    def step_flops(self, state: dict, batch: dict, step: int) -> float:
        """Per-device FLOPs of one train step: matrix products and convolutions counted from
        its jaxpr (`common.jaxpr_flops`: every iteration of scanned layers and chunked losses,
        which XLA's cost analysis counts once), divided by the mesh's devices."""
        trained = {k: state[k] for k in TRAINED_KEYS}
        keys = _keys_of(batch)
        batch = {k: batch[k] for k in keys}
        return common.step_flops(self._train_step, self.mesh, trained, self.frozen(), batch)


def _keys_of(batch: dict) -> tuple[str, ...]:
    return LATENT_KEYS if "latents" in batch else BATCH_KEYS


def _batch_shardings(mesh, keys: tuple[str, ...]) -> dict:
    return {k: parallel.batch_sharding(mesh, 3 if k == "latents" else 2) for k in keys}
