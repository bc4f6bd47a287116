"""Stage 3's teacher forcing: every patch's target and condition from the frozen stages, and
the validation metrics measured against them.

For a batch of clips: the latents (z), their patches (x1), the LLM states before each patch
(from [transcript] [instruction] [adapter embeddings of the clip's patches]), the downsampled
representation of the previous patch, and the stop targets. The validation metrics compare the
flow head with the exact velocity of a per-channel Gaussian fitted to the batch's patches, and
teacher-forced samples with the mean patch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from f3_jax.losses.flow_matching import interpolate, sample_flow_time
from f3_jax.models.adapter import stack_patches
from f3_jax.models.llm import LLM
from f3_jax.sampling import sample_flow


def gaussian_velocity(x_t, t, mean, var):
    """Exact rectified-flow velocity when the data are N(mean, var) per channel (a baseline)."""
    t = t[..., None, None]
    spread = (1 - t) ** 2 + t**2 * var
    return mean + (t * var - (1 - t)) / spread * (x_t - t * mean)


class TeacherForcing:
    """The teacher-forced pieces of a FlowTrainer (its frozen modules and heads)."""

    def __init__(self, trainer):
        self.t = trainer

    def targets_and_conditions(self, frozen: dict, batch: dict) -> dict:
        """Targets and conditions of every patch (no gradients: all frozen)."""
        t = self.t
        llm, rep = t.llm.module, t.representation
        z, fmask = t.latents(frozen, batch)
        r, _ = rep.encode(frozen["representation"], z, fmask)
        d, pmask, embeds = rep.patches(frozen["representation"], r, fmask)
        b, n = pmask.shape
        x1, _ = stack_patches(z, fmask, t.patch)
        x1 = x1.reshape(b, n, t.patch, t.ae.latent_dim)
        text = llm.apply(frozen["llm"], batch["text_ids"], method=LLM.embed)
        instr_ids = jnp.asarray(t.llm.instruction_ids)[None]
        instr = llm.apply(frozen["llm"], instr_ids, method=LLM.embed)
        instr = jnp.broadcast_to(instr, (b,) + instr.shape[1:])
        seq = jnp.concatenate([text, instr, embeds.astype(text.dtype)], axis=1)
        mask = jnp.concatenate(
            [batch["text_mask"], jnp.ones(instr.shape[:2]), pmask], axis=1
        ).astype(jnp.float32)
        hidden = llm.apply(
            frozen["llm"], inputs_embeds=seq, attention_mask=mask, return_logits=False
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

    def velocity(self, params, forced: dict, key=None, train: bool = False):
        """The flow head as v(x_t, t, drop) on the teacher-forced conditions."""
        rngs = {"dropout": key} if key is not None else None

        def v(x_t, time, drop=None):
            return self.t.head.apply(
                {"params": params["flow"]},
                x_t,
                time,
                forced["states"][:, :-1],
                forced["prev"],
                train=train,
                drop_condition=drop,
                rngs=rngs,
            )

        return v

    def per_example_flow(self, velocity, forced: dict, key):
        """Per-example flow loss (mean over its patches) and patch counts."""
        x1, pmask = forced["x1"].astype(jnp.float32), forced["pmask"]
        k_t, k_n = jax.random.split(key)
        fl = self.t.config.flow_loss
        t = sample_flow_time(k_t, pmask.shape, fl.time_schedule, fl.logit_mean, fl.logit_std)
        noise = jax.random.normal(k_n, x1.shape)
        err = jnp.mean(jnp.square(velocity(interpolate(noise, x1, t), t) - (x1 - noise)), (2, 3))
        count = jnp.sum(pmask, axis=1)
        return jnp.sum(err * pmask, axis=1) / jnp.maximum(count, 1.0), count

    def samples(self, params, forced: dict, key):
        """Each patch sampled from its teacher-forced condition (B, N, P, D)."""
        sp = self.t.config.sampling
        velocity = self.velocity(params, forced)
        shape = forced["x1"].shape

        def v(x, time, drop):  # the sampler's batch axis is (B*N) patches
            b = shape[0] * shape[1]
            half = x.shape[0] // b  # 2 with guidance (cond; uncond), else 1
            xs = x.reshape(half, *shape)
            ts = time.reshape(half, shape[0], shape[1])
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
        return x.reshape(shape)

    def metrics(self, params, forced: dict, key) -> tuple[dict, jax.Array]:
        """Per-example (value, weight) validation metrics, and the teacher-forced samples."""
        pm = forced["pmask"][..., None, None]
        n_frames = jnp.maximum(jnp.sum(pm), 1.0) * self.t.patch
        mean = jnp.sum(forced["x1"] * pm, axis=(0, 1, 2)) / n_frames
        var = jnp.sum(jnp.square(forced["x1"] - mean) * pm, axis=(0, 1, 2)) / n_frames
        baseline = lambda x_t, t: gaussian_velocity(x_t, t, mean, var)
        flow, count = self.per_example_flow(self.velocity(params, forced), forced, key)
        base, _ = self.per_example_flow(baseline, forced, key)
        logits = self.t.stop.apply({"params": params["stop"]}, forced["states"])
        hit = ((logits > 0) == (forced["stop_target"] > 0)) * forced["stop_mask"]
        stop_n = jnp.sum(forced["stop_mask"], axis=1)
        samples = self.samples(params, forced, key)
        mse = jnp.mean(jnp.square(samples - forced["x1"]), (2, 3))
        mean_mse = jnp.mean(jnp.square(mean - forced["x1"]), (2, 3))
        per_patch = lambda x: jnp.sum(x * forced["pmask"], 1) / jnp.maximum(count, 1.0)
        return {
            "flow/loss": (flow, count),
            "flow/gaussian_baseline": (base, count),
            "flow/teacher_forced_latent_mse": (per_patch(mse), count),
            "flow/mean_patch_latent_mse": (per_patch(mean_mse), count),
            "stop/accuracy": (jnp.sum(hit, 1) / jnp.maximum(stop_n, 1.0), stop_n),
        }, samples
