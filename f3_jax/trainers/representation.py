"""Stage 2 trainer: the representation encoder on frozen latents, RQ-MTP and frozen-LLM losses.

Frozen inside every step, held by the trainer and never part of the optimized state: the
stage-1 encoder and bottleneck (read from `config.autoencoder.workdir`'s export, run in
inference mode: no noise, no gradients) and the LLM (from `config.llm.path`). The state is
  step, rng, skipped,
  params: {encoder, heads, downsampler, adapter}, opt,
  quantizer: the frozen random projection and codebooks (saved so targets never change).
Whether a batch has any transcript is decided on the host from the numpy batch (`host_batch`
records it under VARIANT_KEY, which stays on the host), so a batch without text runs a step
variant that never touches the LLM and no step waits on a device-to-host transfer. With
config.data.latent_cache, training batches hold cached latents (LATENT_KEYS) and their step
variants skip the autoencoder; validation stays on audio.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from f3_jax import checkpoint, parallel
from f3_jax.data import latent_records
from f3_jax.losses import rq_mtp
from f3_jax.metrics.wer import word_error_rate
from f3_jax.models.adapter import Downsampler, LLMAdapter
from f3_jax.models.llm import LLM
from f3_jax.models.llm_loaders import load_llm
from f3_jax.models.llm_prompt import (
    greedy_transcribe,
    prefix_transcript_nll,
    prompt_embeddings,
    transcript_nll,
)
from f3_jax.models.quantizer import RandomProjectionQuantizer
from f3_jax.models.representation import RepresentationEncoder
from f3_jax.models.rq_mtp import RQMTPHeads
from f3_jax.trainers import common, frozen

BATCH_KEYS = ("audio", "mask", "text_ids", "text_mask")
LATENT_KEYS = ("latents", "frame_mask", "text_ids", "text_mask")  # data.latent_cache batches
AE_EXPORT = "autoencoder"  # subdirectory of this stage's export holding the frozen stage 1
# host_batch's flag "this batch has text" (a 0-d object array: global_batch keeps it on the host)
VARIANT_KEY = "with_llm"


class RepresentationTrainer:
    """Builds the stage-2 state and its jitted step functions for one mesh."""

    total_loss_key = "loss/total"
    headline_metrics = (
        "rq_mtp/acc_h1",
        "rq_mtp/ce",
        "transcript/nll",
        "transcript/wer",
    )  # the validation log line

    def __init__(self, config, mesh, *, abstract_frozen=False, stand_ins=None):
        """abstract_frozen, stand_ins: see f3_jax.trainers.create."""
        self.config = config
        self.mesh = mesh
        abstract = abstract_frozen or common.is_abstract(mesh)
        ac = config.autoencoder
        self.ae = frozen.FrozenAutoencoder(
            ac.workdir,
            config.sample_rate,
            mesh,
            dtype=ac.dtype,
            param_dtype=ac.param_dtype,
            abstract=abstract,
            stand_in=(stand_ins or {}).get("autoencoder"),
        )
        lc = config.llm
        self.llm_config, self.llm_params, self.text_tokenizer = load_llm(
            lc.path,
            mesh=mesh,
            param_dtype=lc.param_dtype,
            dtype=lc.dtype,
            remat=lc.remat,
            scan_layers=lc.scan_layers,
            abstract=abstract,
        )
        self.llm = LLM(self.llm_config)
        self.instruction_ids = np.asarray(self.text_tokenizer.encode(lc.instruction), np.int32)
        self.encoder = RepresentationEncoder.from_config(config)
        self.heads = RQMTPHeads.from_config(config)
        a = config.adapter
        self.downsampler = Downsampler(a.downsample, a.width, config.compute_dtype)
        self.adapter = LLMAdapter(a.hidden, self.llm_config.hidden_size, config.compute_dtype)
        self.quantizer = RandomProjectionQuantizer.from_config(config)
        o = config.optim
        self.lr = common.learning_rate_schedule(
            o.lr, o.warmup_steps, config.train.steps, o.schedule
        )
        self.tx = common.adamw(self.lr, o)
        self.crop = round(config.data.crop_seconds * config.sample_rate)
        self._abstract, self.shardings = common.state_layout(self._boxed_state, mesh)
        self._compile()

    # ---- state -------------------------------------------------------------------------
    def _boxed_state(self) -> dict:
        key = jax.random.key(self.config.seed)
        keys = jax.random.split(key, 4)
        frames = self.crop // self.ae.hop
        z = jnp.zeros((1, frames, self.ae.latent_dim), jnp.float32)
        m = jnp.ones((1, frames), jnp.float32)
        enc = self.encoder.init(keys[0], z, m)
        r = jnp.zeros((1, frames, self.encoder.width), jnp.float32)
        down = self.downsampler.init(keys[2], r, m)
        d = jnp.zeros((1, 1, self.downsampler.width), jnp.float32)
        params = {
            "encoder": enc["params"],
            "heads": self.heads.init(keys[1], r)["params"],
            "downsampler": down["params"],
            "adapter": self.adapter.init(keys[3], d)["params"],
        }
        quantizer = self.quantizer.init_params(self.config.quantizer.seed, self.ae.latent_dim)
        return {
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(key),
            "skipped": jnp.zeros((), jnp.int32),
            "params": params,
            "opt": self.tx.init(params),
            "quantizer": quantizer,
        }

    def initial_state(self) -> dict:
        return common.sharded_init(self._boxed_state, self.mesh, self.shardings)

    def logical_state(self) -> dict:
        """The state's shapes with each parameter's logical axis names (nn.LogicallyPartitioned
        boxes), from tracing alone: what memory planning reads."""
        return jax.eval_shape(self._boxed_state)

    def lower_train_step(self, batch: dict, step: int = 0, **lower_kwargs):
        """The train step for `batch` (arrays or ShapeDtypeStructs) lowered from the abstract
        state and the frozen weights (arrays or ShapeDtypeStructs): compile it for its memory
        and cost analysis, or lower it for another platform (lowering_platforms=...)."""
        state = self.abstract_state()
        trained = {k: state[k] for k in ("step", "rng", "skipped", "params", "opt")}
        with_llm = bool(batch[VARIANT_KEY].item()) if VARIANT_KEY in batch else True
        keys = _keys_of(batch)
        batch = {k: batch[k] for k in keys}
        with common.mesh_context(self.mesh):
            jitted = self._steps[with_llm, keys]
            traced = jitted.trace(trained, state["quantizer"], self.frozen(), batch)
            return traced.lower(**lower_kwargs)

    def abstract_state(self) -> dict:
        return common.abstract_like(self.shardings, self._abstract)

    def frozen(self) -> dict:
        """The frozen autoencoder and LLM weights (read-only arguments of every step)."""
        return {"ae": self.ae.variables, "llm": self.llm_params}

    @functools.cached_property
    def latent_cache(self) -> latent_records.LatentCache | None:
        """The cache of this autoencoder under data.latent_cache, checked (None when off).

        Read by train.py only, so that evaluating a run needs no cache.
        """
        root = self.config.data.get("latent_cache", "")
        return latent_records.open_cache(root, self.ae.digest, self.ae.hop) if root else None

    # ---- forward pieces ----------------------------------------------------------------
    def _targets(self, quantizer, z, fmask):
        tokens, valid = self.quantizer.apply({"params": quantizer}, z, fmask)
        targets, tmask = rq_mtp.future_targets(tokens, valid, self.config.rq_mtp.horizons)
        return tokens, targets, tmask

    def _audio_embeddings(self, params, r, fmask):
        patches, pmask = self.downsampler.apply({"params": params["downsampler"]}, r, fmask)
        return self.adapter.apply({"params": params["adapter"]}, patches), pmask

    def _transcript(self, params, llm_params, r, fmask, batch):
        embeds, pmask = self._audio_embeddings(params, r, fmask)
        return transcript_nll(
            self.llm,
            llm_params,
            embeds,
            pmask,
            self.instruction_ids,
            batch["text_ids"],
            batch["text_mask"],
        )

    def _rq_mtp_stats(self, params, r, targets, tmask):
        """RQ-MTP per-example stats, the heads' logits computed one chunk at a time."""
        heads = params["heads"]["heads"]
        return rq_mtp.chunked_per_example_stats(
            heads["kernel"], heads["bias"], r, targets, tmask, self.heads.dtype
        )

    # ---- steps -------------------------------------------------------------------------
    def _latents(self, frozen, batch):
        if "latents" in batch:  # from the latent cache
            return batch["latents"], batch["frame_mask"]
        return self.ae.latents(frozen["ae"], batch["audio"], batch["mask"])

    def _train_step(self, trained, quantizer, frozen, batch, *, with_llm: bool):
        z, fmask = self._latents(frozen, batch)
        _, targets, tmask = self._targets(quantizer, z, fmask)
        lc = self.config.loss

        def loss_fn(params):
            r = self.encoder.apply({"params": params["encoder"]}, z, fmask)["repr"]
            stats = self._rq_mtp_stats(params, r, targets, tmask)
            rq_loss, accuracy = rq_mtp.loss_and_accuracy_from_stats(stats, targets.shape[-1])
            terms = {"rq_mtp": rq_loss}
            if with_llm:
                nll, count = self._transcript(params, frozen["llm"], r, fmask, batch)
                terms["transcript"] = jnp.sum(nll) / jnp.maximum(jnp.sum(count), 1.0)
            total = lc.rq_mtp_weight * rq_loss
            if with_llm:
                total = total + lc.llm_weight * terms["transcript"]
            return total, (terms, accuracy)

        (total, (terms, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trained["params"]
        )
        params, opt, applied, gnorm = common.guarded_update(
            self.tx, trained["params"], trained["opt"], grads
        )
        skipped = 1 - applied.astype(jnp.int32)
        metrics = {f"loss/{k}": v for k, v in terms.items()} | {
            "loss/total": total,
            "grad_norm/total": gnorm,
            "skipped/step": skipped,
            "skipped/total": trained["skipped"] + skipped,
            "lr": self.lr(trained["step"]),
            "data/text_fraction": jnp.mean(jnp.max(batch["text_mask"], axis=1)),
        }
        metrics |= {f"rq_mtp/acc_h{h + 1}": accuracy[h] for h in range(accuracy.shape[0])}
        new = dict(
            trained,
            params=params,
            opt=opt,
            step=trained["step"] + 1,
            skipped=trained["skipped"] + skipped,
        )
        return new, metrics

    def _eval_step(self, params, quantizer, frozen, batch):
        """Per-example (sum, count) pairs of every validation metric, and the LLM prefix."""
        z, fmask = self.ae.latents(frozen["ae"], batch["audio"], batch["mask"])
        tokens, targets, tmask = self._targets(quantizer, z, fmask)
        r = self.encoder.apply({"params": params["encoder"]}, z, fmask)["repr"]
        stats = self._rq_mtp_stats(params, r, targets, tmask)
        baseline = rq_mtp.copy_baseline_correct(targets, tokens, tmask)
        count, cbs = stats["count"], targets.shape[-1]
        frames = jnp.sum(count, axis=1)
        metrics = {"rq_mtp/ce": _mean(stats["ce"] / cbs, frames)}
        for h in range(count.shape[1]):
            metrics[f"rq_mtp/acc_h{h + 1}"] = _mean(stats["correct"][:, h].mean(-1), count[:, h])
            for c in range(cbs):
                metrics[f"rq_mtp/acc_h{h + 1}_cb{c}"] = _mean(
                    stats["correct"][:, h, c], count[:, h]
                )
        metrics["rq_mtp/copy_baseline_h1"] = _mean(baseline[:, 0].mean(-1), count[:, 0])
        chance = jnp.full_like(frames, 1.0 / self.quantizer.codebook_size)
        metrics["rq_mtp/chance"] = (chance, count[:, 0])
        # The downsampler, adapter and prefix once, for the loss and for greedy transcription.
        embeds, pmask = self._audio_embeddings(params, r, fmask)
        prefix, prefix_mask = prompt_embeddings(
            self.llm, frozen["llm"], embeds, pmask, self.instruction_ids
        )
        nll, ntok = prefix_transcript_nll(
            self.llm, frozen["llm"], prefix, prefix_mask, batch["text_ids"], batch["text_mask"]
        )
        metrics["transcript/nll"] = _mean(nll, ntok)
        return metrics, {"prefix": prefix, "prefix_mask": prefix_mask}

    def _represent(self, params, frozen, audio, mask):
        z, fmask = self.ae.latents(frozen["ae"], audio, mask)
        return self.encoder.apply({"params": params["encoder"]}, z, fmask)["repr"], fmask

    def _compile(self) -> None:
        s, mesh = self.shardings, self.mesh
        rep = parallel.replicated(mesh)
        batch_s = _batch_shardings(mesh, BATCH_KEYS)
        trained_s = {k: s[k] for k in ("step", "rng", "skipped", "params", "opt")}
        frozen_s = jax.tree.map(lambda x: x.sharding, self.frozen())
        self._steps = {
            (on, keys): jax.jit(
                functools.partial(self._train_step, with_llm=on),
                in_shardings=(trained_s, s["quantizer"], frozen_s, _batch_shardings(mesh, keys)),
                out_shardings=(trained_s, rep),
                donate_argnums=(0,),
            )
            for on in (False, True)
            for keys in (BATCH_KEYS, LATENT_KEYS)
        }
        self._eval_jit = jax.jit(
            self._eval_step,
            in_shardings=(s["params"], s["quantizer"], frozen_s, batch_s),
        )
        self._represent_jit = jax.jit(self._represent)

    # ---- public step API used by the train loop ----------------------------------------
    def host_batch(self, local: dict) -> dict:
        """This process's numpy batch with the transcripts tokenized for the LLM, and the step
        variant it needs (VARIANT_KEY: whether any transcript is in it), decided here on the host.

        With several processes every one must run the same program, and no process sees the
        others' texts without a collective: they always run the LLM term (a batch without any
        text then only wastes that term's compute; its loss is the same).
        """
        out = common.text_batch(local, self.text_tokenizer, self.config.llm.max_text_tokens)
        with_llm = jax.process_count() > 1 or bool(np.any(out["text_mask"]))
        return out | {VARIANT_KEY: np.array(with_llm, dtype=object)}

    def train_step(self, state: dict, batch: dict, step: int) -> tuple[dict, dict]:
        # Read on the host (never a device-to-host transfer); a batch not made by host_batch
        # runs the LLM term.
        with_llm = bool(batch[VARIANT_KEY].item()) if VARIANT_KEY in batch else True
        trained = {k: state[k] for k in ("step", "rng", "skipped", "params", "opt")}
        keys = _keys_of(batch)
        batch = {k: batch[k] for k in keys}
        with jax.set_mesh(self.mesh):
            trained, metrics = self._steps[with_llm, keys](
                trained, state["quantizer"], self.frozen(), batch
            )
        return dict(state, **trained), metrics

    def log_metrics(self, state: dict, batch: dict, step: int) -> dict:
        return {}

    def step_phases(self) -> list[tuple[int, float]]:
        """Every step costs the same here: one phase."""
        return [(0, 1.0)]

    def eval_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        batch = {k: batch[k] for k in BATCH_KEYS}
        with jax.set_mesh(self.mesh):
            return self._eval_jit(state["params"], state["quantizer"], self.frozen(), batch)

    def eval_samples(self, writer, step: int, local: dict, outputs: dict, state: dict) -> dict:
        """Greedy transcription of the first utterances of a valid batch; their WER."""
        n = min(self.config.eval.num_transcribe, len(local["text"]))
        if n == 0:
            return {}
        prefix, mask = parallel.to_host((outputs["prefix"], outputs["prefix_mask"]))
        with jax.set_mesh(self.mesh):
            ids = greedy_transcribe(
                self.llm_params,
                self.llm_config,
                jnp.asarray(prefix[:n]),
                jnp.asarray(mask[:n]),
                self.config.eval.max_new_tokens,
                self.text_tokenizer.eos_id,
            )
        hyps = [self.text_tokenizer.decode(row).strip() for row in ids]
        refs = [str(t) for t in local["text"][:n]]
        wer = word_error_rate(refs, hyps)
        lines = [f"| {r} | {h} |" for r, h in zip(refs, hyps)]
        writer.text(step, "transcripts", "| reference | greedy |\n|---|---|\n" + "\n".join(lines))
        return {"transcript/wer": wer}

    def inference_variables(self, state: dict) -> dict:
        return {"params": state["params"], "quantizer": state["quantizer"]}

    def export(self, workdir: str, state: dict, step: int) -> None:
        """WORKDIR/export: this stage's weights and config, plus a copy of the frozen stage 1."""
        self.export_later(workdir, state, step)()

    def export_later(self, workdir: str, state: dict, step: int) -> Callable[[], None]:
        """Fetches the weights to the host now; the returned call writes the files."""
        variables = parallel.to_host(self.inference_variables(state))

        def write() -> None:
            checkpoint.write_export(workdir, variables, self.config, step)
            if jax.process_index() == 0:
                dest = os.path.join(workdir, checkpoint.EXPORT_DIR, AE_EXPORT)
                frozen.copy_export(self.ae.export_dir, dest)

        return write

    def represent(self, state: dict, audio, mask):
        """(B, L) audio -> (B, T, width) representations and the (B, T) frame mask."""
        with jax.set_mesh(self.mesh):
            return self._represent_jit(state["params"], self.frozen(), audio, mask)

    def parameter_count(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self._abstract["params"]))

    def step_flops(self, state: dict, batch: dict, step: int) -> float:
        """Per-device FLOPs of one train step: matrix products and convolutions counted from
        its jaxpr (`common.jaxpr_flops`: every iteration of scanned layers and chunked losses,
        which XLA's cost analysis counts once), divided by the mesh's devices."""
        trained = {k: state[k] for k in ("step", "rng", "skipped", "params", "opt")}
        keys = _keys_of(batch)
        batch = {k: batch[k] for k in keys}
        fn = functools.partial(self._train_step, with_llm=True)
        return common.step_flops(fn, self.mesh, trained, state["quantizer"], self.frozen(), batch)


def _keys_of(batch: dict) -> tuple[str, ...]:
    return LATENT_KEYS if "latents" in batch else BATCH_KEYS


def _batch_shardings(mesh, keys: tuple[str, ...]) -> dict:
    return {k: parallel.batch_sharding(mesh, 3 if k == "latents" else 2) for k in keys}


def _mean(total: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example (mean, weight) from a per-example sum over `count` items."""
    return total / jnp.maximum(count, 1.0), count
