"""Stage-1 evaluation: reconstruction quality, intelligibility, latent health, noise robustness.

Per checkpoint, on every utterance of the split:
- on device, jitted and batched: multi-scale mel distance (the training validation's scales),
  multi-resolution STFT distance, SI-SDR, per-channel latent mean/std and per-frame RMS, and
  the robustness curve: mel distance of decode(z + sigma * eps) for each sigma of SIGMAS (eps
  fixed per batch, so every checkpoint sees the same noise), and again with sigma in units of
  the split's latent std (sigma * sqrt(mean channel variance): latents of any scale, such as
  the plain bottleneck's, compare on it). Each sigma costs a decoder pass, so the curves cover
  the first batches of the split only (ROBUSTNESS_EXAMPLES utterances);
- generability (metrics/generability.py): a small autoregressive model trained for a fixed
  budget (config.generability, seeded) on the latents of the split's first utterances predicts
  the next patch of the last ones; its error normalized by the latent variance;
- on host threads: wideband PESQ, STOI (mean over the clips they can score, and the number
  they skip: `skipped/pesq`, `skipped/stoi`), and pocketsphinx transcripts of the
  reconstructions scored against the transcripts, next to the recognizer's WER on the original
  audio (computed once per split and cached: it does not depend on the checkpoint) and the
  difference of the two. pocketsphinx is far from perfect on clean speech, so only the
  difference says what the codec costs. An utterance whose original audio the recognizer skips
  (silent, too short, or it raised) is left out of both WERs and counted (`skipped/wer`); a
  reconstruction it skips counts as recognized as nothing, since that is the codec's doing.
Spectrogram pairs and audio of the first utterances go to the report and TensorBoard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from f3_jax.data import DataError
from f3_jax.dsp import frame_mask, mel_distance
from f3_jax.evaluation import EvalOptions, EvalResult
from f3_jax.evaluation.batches import clips, device_batch, local_batches, real_rows, split_size
from f3_jax.evaluation.progress import EvalProgress
from f3_jax.metrics import intelligibility, latents, recognizer
from f3_jax.metrics.audio import si_sdr
from f3_jax.metrics.generability import GenerabilityBudget, generability
from f3_jax.metrics.stft_distance import stft_distance
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.stages.autoencoder import panels

SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
NUM_AUDIO_EXAMPLES = 2  # spectrogram pairs and audio clips per evaluation
ROBUSTNESS_SEED = 0
ROBUSTNESS_EXAMPLES = 8  # at least this many utterances (whole batches) get the curve

HEADLINE = {
    "mel_distance": "lower",
    "stft_distance": "lower",
    "si_sdr": "higher",
    "pesq": "higher",
    "stoi": "higher",
    "wer/reconstruction": "lower",
    "wer/difference": "lower",
    "robustness/mel_sigma_0.5": "lower",
    "robustness/mel_rel_sigma_0.5": "lower",
    "generability/nmse": "lower",
}


class AutoencoderEvaluator:
    """Evaluates stage-1 train states with the trainer's model on the trainer's mesh."""

    def __init__(self, config, trainer, options: EvalOptions):
        self.config = config
        self.trainer = trainer
        self.options = options
        self.model: Autoencoder = trainer.model
        self.hop = int(config.model.hop)
        self.sample_rate = int(config.sample_rate)
        self._reconstruct_jit = jax.jit(self._reconstruct)
        self._noisy_mel_jit = jax.jit(self._noisy_mel)
        self._original_transcripts: dict[tuple, list[str]] = {}
        self.budget = generability_budget(config)

    # ---- device side ---------------------------------------------------------------------
    def _reconstruct(self, variables, audio, mask):
        out = self.model.apply(variables, audio, train=False)
        ref, est = audio * mask, out["wav"][:, : audio.shape[1]] * mask
        z = out["z"]
        metrics = {
            "mel_distance": mel_distance(ref, est, sample_rate=self.sample_rate, mask=mask),
            "stft_distance": stft_distance(ref, est, mask=mask),
            "si_sdr": si_sdr(ref, est, mask=mask),
        }
        fmask = frame_mask(mask, self.hop, z.shape[1])
        return est, z, metrics, latents.latent_sums(z, fmask)

    def _noisy_mel(self, variables, z, audio, mask, sigma, batch_index):
        key = jax.random.fold_in(jax.random.key(ROBUSTNESS_SEED), batch_index)
        noisy = z + sigma * jax.random.normal(key, z.shape, z.dtype)
        wav = self.model.apply(variables, noisy, method=Autoencoder.decode)
        est = wav[:, : audio.shape[1]] * mask
        return mel_distance(audio * mask, est, sample_rate=self.sample_rate, mask=mask)

    def _pad_to_hop(self, local: dict) -> dict:
        # Eval buckets need not be whole frames; the decoder returns whole frames only.
        extra = -local["audio"].shape[1] % self.hop
        pad = lambda x: np.pad(x, ((0, 0), (0, extra)))
        return {"audio": pad(local["audio"]), "mask": pad(local["mask"])}

    def _batch(self, variables, local: dict, index: int, robustness: bool) -> dict:
        """Device work of one batch; numpy results of its real rows."""
        mesh = self.trainer.mesh
        batch = device_batch(self._pad_to_hop(local), mesh)
        audio, mask = batch["audio"], batch["mask"]
        noisy = []
        with jax.set_mesh(mesh):
            est, z, metrics, sums = self._reconstruct_jit(variables, audio, mask)
            if robustness:  # sigma 0 is the reconstruction itself
                noisy = self._noisy_curve(variables, (z, audio, mask), index, 1.0)
        rows = real_rows(local)
        est, metrics, sums, noisy, z_host = jax.device_get((est, metrics, sums, noisy, z))
        out = {k: np.asarray(v)[rows] for k, v in metrics.items()}
        curve = [out["mel_distance"]] + [np.asarray(n)[rows] for n in noisy]
        out["robustness"] = np.stack(curve, axis=1) if noisy else np.zeros((0, len(SIGMAS)))
        # kept for the relative curve, once the split's latent std is known
        out["device"] = ((z, audio, mask), index, rows) if robustness else None
        out["sums"] = sums
        frames = frame_mask(np.asarray(local["mask"]), self.hop, z_host.shape[1]).sum(-1)
        out["latents"] = [np.asarray(z_host[i, : int(frames[i])], np.float32) for i in rows]
        out["est"] = clips(est, local["mask"], rows)
        out["ref"] = clips(local["audio"], local["mask"], rows)
        out["text"] = [str(local["text"][i]) for i in rows]
        out["id"] = [str(local["id"][i]) for i in rows]
        return out

    def _noisy_curve(self, variables, arrays: tuple, index: int, unit: float) -> list:
        """Mel distances of decode(z + s * unit * eps) for the nonzero sigmas s of SIGMAS."""
        z, audio, mask = arrays
        return [
            self._noisy_mel_jit(variables, z, audio, mask, jnp.float32(s * unit), index)
            for s in SIGMAS[1:]
        ]

    def _relative_robustness(self, variables, parts: list, latent_std: float) -> np.ndarray:
        """The robustness curve with sigma in units of `latent_std`, over the same utterances
        and noise draws as the absolute one: (examples, len(SIGMAS))."""
        rows_out = []
        with jax.set_mesh(self.trainer.mesh):
            for p in parts:
                if p["device"] is None:
                    continue
                arrays, index, rows = p["device"]
                noisy = jax.device_get(self._noisy_curve(variables, arrays, index, latent_std))
                curve = [p["mel_distance"]] + [np.asarray(n)[rows] for n in noisy]
                rows_out.append(np.stack(curve, axis=1))
                p["device"] = None  # the device arrays are no longer needed
        return np.concatenate(rows_out) if rows_out else np.zeros((0, len(SIGMAS)))

    # ---- evaluation ----------------------------------------------------------------------
    def _device_pass(self, variables, step: int, progress) -> list[dict]:
        """Every batch of the split through the model: per-batch results (see `_batch`)."""
        o = self.options
        parts, noisy_rows = [], 0
        total = split_size(self.config, o.split, o.max_examples)
        batches = local_batches(
            self.config, o.split, o.batch_size, o.max_examples, self.trainer.mesh
        )
        with progress.phase("reconstruction metrics", total) as advance:
            for i, local in enumerate(batches):
                # The robustness curve decodes len(SIGMAS) - 1 more times: first batches only.
                parts.append(self._batch(variables, local, i, noisy_rows < ROBUSTNESS_EXAMPLES))
                noisy_rows += len(parts[-1]["robustness"])
                advance(len(parts[-1]["id"]))
        if not sum(len(p["id"]) for p in parts):
            raise DataError(f"split {o.split!r} of {self.config.data.path} has no utterances")
        return parts

    def _latent_scalars(self, variables, parts: list, progress) -> tuple[dict, dict, list]:
        """Latent statistics, both robustness curves and generability: (scalars, latent
        summary, [absolute curve, relative curve])."""
        stats = latents.LatentStats()
        for p in parts:
            stats.add(p["sums"])
        summary = stats.summary()
        scalars = panels.latent_scalars(summary)
        latent_std = float(np.sqrt(np.mean(np.square(summary["channel_std"]))))
        scalars["latent/std"] = latent_std
        absolute = np.concatenate([p["robustness"] for p in parts]).mean(axis=0)
        relative = self._relative_robustness(variables, parts, latent_std).mean(axis=0)
        for name, curve in (("mel_sigma", absolute), ("mel_rel_sigma", relative)):
            scalars |= {f"robustness/{name}_{s:g}": float(v) for s, v in zip(SIGMAS, curve)}
        scalars["robustness/num_examples"] = float(sum(len(p["robustness"]) for p in parts))
        seqs = [z for p in parts for z in p["latents"]]
        with progress.phase("generability (small AR model on the latents)", len(seqs)) as advance:
            result = generability(seqs, self.budget)
            advance(len(seqs))
        if not result["num_test"]:  # too little latent to hold some out: no number, a reason
            logging.info(
                "generability not measured: it needs two utterances of %d frames or more, and "
                "the split gives %d",
                2 * self.budget.patch_frames,
                sum(len(z) >= 2 * self.budget.patch_frames for z in seqs),
            )
            result = {k: v for k, v in result.items() if np.isfinite(v)}
        scalars |= {f"generability/{k}": v for k, v in result.items()}
        return scalars, summary, [absolute, relative]

    def evaluate(self, state: dict, step: int) -> EvalResult:
        variables = self.trainer.inference_variables(state)
        o = self.options
        progress = EvalProgress(step, o.split)
        parts = self._device_pass(variables, step, progress)
        cat = lambda key: [x for p in parts for x in p[key]]
        refs, ests, texts, ids = cat("ref"), cat("est"), cat("text"), cat("id")
        scalars = {k: float(np.mean(np.concatenate([p[k] for p in parts]))) for k in HOST_KEYS}
        latent_scalars, summary, curves = self._latent_scalars(variables, parts, progress)
        scalars |= latent_scalars
        with progress.phase("PESQ and STOI", len(refs)) as advance:
            scalars |= self._quality(refs, ests)
            advance(len(refs))
        with progress.phase("recognizer (originals once, reconstructions)", len(refs)) as advance:
            hyps_orig = self._transcripts_of_originals(o.split, ids, refs)
            hyps_rec = recognizer.transcribe(ests, self.sample_rate, o.num_threads)
            advance(len(refs))
        scalars |= panels.wer_scalars(texts, hyps_orig, hyps_rec)
        scalars["num_examples"] = float(len(ids))
        result_panels = [
            panels.wer_panel(scalars),
            panels.robustness_panel(SIGMAS, curves[0]),
            panels.robustness_panel(SIGMAS, curves[1], relative=True),
            panels.latent_panel(summary),
            panels.generability_panel(scalars, self.budget.patch_frames),
            panels.transcript_panel(texts, hyps_orig, hyps_rec, ids),
        ]
        audio = {
            ids[i]: {"original": refs[i], "reconstruction": ests[i]}
            for i in range(min(NUM_AUDIO_EXAMPLES, len(ids)))
        }
        histograms = {
            "latent/channel_mean": summary["channel_mean"],
            "latent/channel_std": summary["channel_std"],
        }
        return EvalResult(
            scalars, dict(HEADLINE), result_panels, histograms, audio, sample_rate=self.sample_rate
        )

    def _quality(self, refs: list, ests: list) -> dict[str, float]:
        """PESQ and STOI on host threads: means over scorable clips, and counts of the rest."""
        out = {}
        n = self.options.num_threads
        for name, fn in (("pesq", intelligibility.pesq_wb), ("stoi", intelligibility.stoi)):
            summary = intelligibility.summarize(fn(refs, ests, self.sample_rate, n))
            out[name] = summary["mean"]
            out[f"skipped/{name}"] = float(summary["num_skipped"])
        return out

    def _transcripts_of_originals(self, split: str, ids: list, refs: list) -> list[str]:
        key = (split, tuple(ids))
        if key not in self._original_transcripts:
            self._original_transcripts[key] = recognizer.transcribe(
                refs, self.sample_rate, self.options.num_threads
            )
        return self._original_transcripts[key]


HOST_KEYS = ("mel_distance", "stft_distance", "si_sdr")


def generability_budget(config) -> GenerabilityBudget:
    """The generability model and budget of a stage-1 config (config.generability)."""
    g = config.get("generability")
    if g is None:  # a config from before the field existed
        return GenerabilityBudget()
    return GenerabilityBudget(
        patch_frames=int(g.patch_frames),
        context_patches=int(g.context_patches),
        steps=int(g.steps),
        batch_size=int(g.batch_size),
        hidden=int(g.hidden),
        learning_rate=float(g.learning_rate),
        test_fraction=float(g.test_fraction),
        seed=int(g.seed),
    )
