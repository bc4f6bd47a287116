"""Stage 2's trainer: the representation encoder on frozen latents, RQ-MTP and frozen-LLM losses.

Frozen inside every step, held by the trainer and never part of the optimized state: the
stage-1 encoder and bottleneck (run in inference mode: no noise, no gradients) and the LLM.
The state is
  step, rng, skipped,
  params: {encoder, heads, downsampler, adapter}, opt,
  quantizer: the frozen random projection and codebooks (saved so targets never change).
Whether a batch has any transcript is decided on the host from the numpy batch (`host_batch`
records it under VARIANT_KEY, which stays on the host), so a batch without text runs a step
variant that never touches the LLM and no step waits on a device-to-host transfer. Batches of
the latent cache hold latents (their step variants skip the autoencoder); validation stays on
audio.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from f3_jax import parallel
from f3_jax.losses import rq_mtp
from f3_jax.metrics.wer import word_error_rate
from f3_jax.models.adapter import Downsampler, LLMAdapter
from f3_jax.models.llm_prompt import (
    greedy_transcribe,
    prefix_transcript_nll,
    prompt_embeddings,
    transcript_nll,
)
from f3_jax.models.quantizer import RandomProjectionQuantizer
from f3_jax.models.representation import RepresentationEncoder
from f3_jax.models.rq_mtp import RQMTPHeads
from f3_jax.stages.latent_trainer import LatentStageTrainer

# host_batch's flag "this batch has text" (a 0-d object array: global_batch keeps it on the host)
VARIANT_KEY = "with_llm"


class RepresentationTrainer(LatentStageTrainer):
    """Builds the stage-2 state and its jitted step functions for one mesh."""

    headline_metrics = ("rq_mtp/acc_h1", "rq_mtp/ce", "transcript/nll", "transcript/wer")

    def build(self) -> None:
        self.build_frozen()
        config = self.config
        self.encoder = RepresentationEncoder.from_config(config)
        self.heads = RQMTPHeads.from_config(config)
        a = config.adapter
        self.downsampler = Downsampler(a.downsample, a.width, config.compute_dtype)
        self.adapter = LLMAdapter(a.hidden, self.llm.config.hidden_size, config.compute_dtype)
        self.quantizer = RandomProjectionQuantizer.from_config(config)
        self._represent_jit = jax.jit(self._represent_audio)

    # ---- state -------------------------------------------------------------------------
    def boxed_state(self) -> dict:
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
        return self.fresh_state(key, params, quantizer=quantizer)

    def frozen_weights(self) -> dict:
        return {"autoencoder": self.ae.variables, "llm": self.llm.params}

    def inference_variables(self, state: dict) -> dict:
        return {"params": state["params"], "quantizer": state["quantizer"]}

    # ---- step variants -----------------------------------------------------------------
    def host_batch(self, local: dict) -> dict:
        """The step's inputs, and its variant (VARIANT_KEY: whether any transcript is in it),
        decided here on the host.

        With several processes every one must run the same program, and no process sees the
        others' texts without a collective: they always run the LLM term (a batch without any
        text then only wastes that term's compute; its loss is the same).
        """
        out = super().host_batch(local)
        with_llm = jax.process_count() > 1 or bool(np.any(out["text_mask"]))
        return out | {VARIANT_KEY: np.array(with_llm, dtype=object)}

    def variant(self, batch: dict, step: int) -> bool:
        # Read on the host (never a device-to-host transfer); a batch not made by host_batch
        # runs the LLM term, unless loss.objectives leaves it out.
        if self.config.loss.get("objectives", "both") == "rq_mtp":
            return False
        return bool(batch[VARIANT_KEY].item()) if VARIANT_KEY in batch else True

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
            self.llm.module, llm_params, embeds, pmask, self.llm.instruction_ids,
            batch["text_ids"], batch["text_mask"],
        )  # fmt: skip

    def _rq_mtp_stats(self, params, r, targets, tmask):
        """RQ-MTP per-example stats, the heads' logits computed one chunk at a time."""
        heads = params["heads"]["heads"]
        return rq_mtp.chunked_per_example_stats(
            heads["kernel"], heads["bias"], r, targets, tmask, self.heads.dtype
        )

    def _represent(self, params, z, fmask):
        return self.encoder.apply({"params": params["encoder"]}, z, fmask)["repr"]

    # ---- the step ----------------------------------------------------------------------
    def train_step_fn(self, trained, constants, frozen, batch, *, variant):
        with_llm = variant
        z, fmask = self.latents(frozen, batch)
        _, targets, tmask = self._targets(constants["quantizer"], z, fmask)
        lc = self.config.loss

        with_rq = lc.get("objectives", "both") != "llm"

        def loss_fn(params):
            r = self._represent(params, z, fmask)
            terms, accuracy, total = {}, None, 0.0
            if with_rq:
                stats = self._rq_mtp_stats(params, r, targets, tmask)
                rq_loss, accuracy = rq_mtp.loss_and_accuracy_from_stats(stats, targets.shape[-1])
                terms["rq_mtp"] = rq_loss
                total = lc.rq_mtp_weight * rq_loss
            if with_llm:
                nll, count = self._transcript(params, frozen["llm"], r, fmask, batch)
                terms["transcript"] = jnp.sum(nll) / jnp.maximum(jnp.sum(count), 1.0)
                total = total + lc.llm_weight * terms["transcript"]
            return jnp.asarray(total, jnp.float32), (terms, accuracy)

        (total, (terms, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trained["params"]
        )
        new, metrics = self.model_update(trained, grads)
        metrics |= {f"loss/{k}": v for k, v in terms.items()} | {"loss/total": total}
        metrics["data/text_fraction"] = jnp.mean(jnp.max(batch["text_mask"], axis=1))
        if accuracy is not None:
            metrics |= {f"rq_mtp/acc_h{h + 1}": accuracy[h] for h in range(accuracy.shape[0])}
        return new, metrics

    # ---- validation --------------------------------------------------------------------
    def eval_step_fn(self, inputs, frozen, batch):
        """Per-example (sum, count) pairs of every validation metric, and the LLM prefix."""
        params, quantizer = inputs["params"], inputs["quantizer"]
        z, fmask = self.ae.latents(frozen["autoencoder"], batch["audio"], batch["mask"])
        tokens, targets, tmask = self._targets(quantizer, z, fmask)
        r = self._represent(params, z, fmask)
        stats = self._rq_mtp_stats(params, r, targets, tmask)
        metrics, count = self._rq_mtp_metrics(stats, targets.shape[-1])
        baseline = rq_mtp.copy_baseline_correct(targets, tokens, tmask)
        metrics["rq_mtp/copy_baseline_h1"] = _mean(baseline[:, 0].mean(-1), count[:, 0])
        # The downsampler, adapter and prefix once, for the loss and for greedy transcription.
        embeds, pmask = self._audio_embeddings(params, r, fmask)
        prefix, prefix_mask = prompt_embeddings(
            self.llm.module, frozen["llm"], embeds, pmask, self.llm.instruction_ids
        )
        nll, ntok = prefix_transcript_nll(
            self.llm.module, frozen["llm"], prefix, prefix_mask, batch["text_ids"],
            batch["text_mask"],
        )  # fmt: skip
        metrics["transcript/nll"] = _mean(nll, ntok)
        return metrics, {"prefix": prefix, "prefix_mask": prefix_mask}

    def _rq_mtp_metrics(self, stats: dict, cbs: int) -> tuple[dict, jax.Array]:
        """Cross-entropy, accuracy per horizon and codebook, chance; and the counts (B, H)."""
        count = stats["count"]
        frames = jnp.sum(count, axis=1)
        metrics = {"rq_mtp/ce": _mean(stats["ce"] / cbs, frames)}
        for h in range(count.shape[1]):
            metrics[f"rq_mtp/acc_h{h + 1}"] = _mean(stats["correct"][:, h].mean(-1), count[:, h])
            for c in range(cbs):
                metrics[f"rq_mtp/acc_h{h + 1}_cb{c}"] = _mean(
                    stats["correct"][:, h, c], count[:, h]
                )
        chance = jnp.full_like(frames, 1.0 / self.quantizer.codebook_size)
        metrics["rq_mtp/chance"] = (chance, count[:, 0])
        return metrics, count

    def transcribe(self, outputs: dict, rows: int | None = None) -> list[str]:
        """Greedy transcripts of the first `rows` (all) rows of an eval step's outputs."""
        prefix, mask = parallel.to_host((outputs["prefix"], outputs["prefix_mask"]))
        rows = len(prefix) if rows is None else rows
        with jax.set_mesh(self.mesh):
            ids = greedy_transcribe(
                self.llm.params, self.llm.config, jnp.asarray(prefix[:rows]),
                jnp.asarray(mask[:rows]), self.config.eval.max_new_tokens,
                self.llm.tokenizer.eos_id,
            )  # fmt: skip
        return [self.llm.tokenizer.decode(row).strip() for row in ids]

    def eval_samples(self, writer, step: int, local: dict, outputs: dict, state: dict) -> dict:
        """Greedy transcription of the first utterances of a valid batch; their WER."""
        n = min(self.config.eval.num_transcribe, len(local["text"]))
        if n == 0:
            return {}
        hyps = self.transcribe(outputs, n)
        refs = [str(t) for t in local["text"][:n]]
        lines = [f"| {r} | {h} |" for r, h in zip(refs, hyps)]
        writer.text(step, "transcripts", "| reference | greedy |\n|---|---|\n" + "\n".join(lines))
        return {"transcript/wer": word_error_rate(refs, hyps)}

    def represent(self, state: dict, audio, mask):
        """(B, L) audio -> (B, T, width) representations and the (B, T) frame mask."""
        with jax.set_mesh(self.mesh):
            return self._represent_jit(state["params"], self.frozen_weights(), audio, mask)

    def _represent_audio(self, params, frozen, audio, mask):
        z, fmask = self.ae.latents(frozen["autoencoder"], audio, mask)
        return self._represent(params, z, fmask), fmask


def _mean(total: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example (mean, weight) from a per-example sum over `count` items."""
    return total / jnp.maximum(count, 1.0), count
