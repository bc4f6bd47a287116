"""Stage-1 evaluation: reconstruction quality, intelligibility, latent health, noise robustness.

Per checkpoint, on every utterance of the split:
- on device, jitted and batched: multi-scale mel distance (the training validation's scales),
  multi-resolution STFT distance, SI-SDR, per-channel latent mean/std and per-frame RMS, and
  the robustness curve: mel distance of decode(z + sigma * eps) for each sigma of SIGMAS (eps
  fixed per batch, so every checkpoint sees the same noise). Each sigma costs a decoder pass,
  so the curve covers the first batches of the split only (ROBUSTNESS_EXAMPLES utterances);
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

from f3_jax.data import DataError
from f3_jax.dsp import frame_mask, mel_distance
from f3_jax.evaluation import EvalOptions, EvalResult
from f3_jax.evaluation.batches import clips, device_batch, local_batches, real_rows, split_size
from f3_jax.evaluation.progress import EvalProgress
from f3_jax.metrics import intelligibility, latents, recognizer
from f3_jax.metrics.audio import si_sdr
from f3_jax.metrics.stft_distance import stft_distance
from f3_jax.metrics.wer import word_error_rate
from f3_jax.models.autoencoder import Autoencoder

SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
NUM_AUDIO_EXAMPLES = 2  # spectrogram pairs and audio clips per evaluation
NUM_TRANSCRIPT_ROWS = 8  # transcripts shown in the report
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
                noisy = [
                    self._noisy_mel_jit(variables, z, audio, mask, jnp.float32(s), index)
                    for s in SIGMAS[1:]
                ]
        rows = real_rows(local)
        est, metrics, sums, noisy = jax.device_get((est, metrics, sums, noisy))
        out = {k: np.asarray(v)[rows] for k, v in metrics.items()}
        curve = [out["mel_distance"]] + [np.asarray(n)[rows] for n in noisy]
        out["robustness"] = np.stack(curve, axis=1) if noisy else np.zeros((0, len(SIGMAS)))
        out["sums"] = sums
        out["est"] = clips(est, local["mask"], rows)
        out["ref"] = clips(local["audio"], local["mask"], rows)
        out["text"] = [str(local["text"][i]) for i in rows]
        out["id"] = [str(local["id"][i]) for i in rows]
        return out

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(self, state: dict, step: int) -> EvalResult:
        variables = self.trainer.inference_variables(state)
        o = self.options
        parts, noisy_rows = [], 0
        progress = EvalProgress(step, o.split)
        total = split_size(self.config, o.split, o.max_examples)
        batches = local_batches(self.config, o.split, o.batch_size, o.max_examples)
        with progress.phase("reconstruction metrics", total) as advance:
            for i, local in enumerate(batches):
                # The robustness curve decodes len(SIGMAS) - 1 more times: first batches only.
                parts.append(self._batch(variables, local, i, noisy_rows < ROBUSTNESS_EXAMPLES))
                noisy_rows += len(parts[-1]["robustness"])
                advance(len(parts[-1]["id"]))
        if not sum(len(p["id"]) for p in parts):
            raise DataError(f"split {o.split!r} of {self.config.data.path} has no utterances")
        cat = lambda key: [x for p in parts for x in p[key]]
        refs, ests, texts, ids = cat("ref"), cat("est"), cat("text"), cat("id")
        device = {k: np.concatenate([p[k] for p in parts]) for k in HOST_KEYS}
        stats = latents.LatentStats()
        for p in parts:
            stats.add(p["sums"])

        scalars = {k: float(np.mean(v)) for k, v in device.items() if k != "robustness"}
        robustness = device["robustness"].mean(axis=0)
        scalars |= {f"robustness/mel_sigma_{s:g}": float(v) for s, v in zip(SIGMAS, robustness)}
        scalars["robustness/num_examples"] = float(len(device["robustness"]))
        with progress.phase("PESQ and STOI", len(refs)) as advance:
            scalars |= self._quality(refs, ests)
            advance(len(refs))
        with progress.phase("recognizer (originals once, reconstructions)", len(refs)) as advance:
            hyps_orig = self._transcripts_of_originals(o.split, ids, refs)
            hyps_rec = recognizer.transcribe(ests, self.sample_rate, o.num_threads)
            advance(len(refs))
        scalars |= _wer_scalars(texts, hyps_orig, hyps_rec)
        latent_summary = stats.summary()
        scalars |= _latent_scalars(latent_summary)
        scalars["num_examples"] = float(len(ids))

        panels = [
            _wer_panel(scalars),
            _robustness_panel(robustness),
            _latent_panel(latent_summary),
            _transcript_panel(texts, hyps_orig, hyps_rec, ids),
        ]
        audio = {
            ids[i]: {"original": refs[i], "reconstruction": ests[i]}
            for i in range(min(NUM_AUDIO_EXAMPLES, len(ids)))
        }
        histograms = {
            "latent/channel_mean": latent_summary["channel_mean"],
            "latent/channel_std": latent_summary["channel_std"],
        }
        return EvalResult(
            scalars, dict(HEADLINE), panels, histograms, audio, sample_rate=self.sample_rate
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


HOST_KEYS = ("mel_distance", "stft_distance", "si_sdr", "robustness")


def _wer_scalars(texts: list, hyps_orig: list, hyps_rec: list) -> dict[str, float]:
    """WER of the recognizer on original and reconstructed audio, over utterances with text
    whose original audio it did not skip (None); a skipped reconstruction counts as ''."""
    with_text = [i for i, t in enumerate(texts) if t.strip()]
    if not with_text:
        return {}
    keep = [i for i in with_text if hyps_orig[i] is not None]
    refs = [texts[i] for i in keep]
    orig = word_error_rate(refs, [hyps_orig[i] for i in keep])  # NaN when keep is empty
    rec = word_error_rate(refs, [hyps_rec[i] or "" for i in keep])
    return {
        "wer/original": orig,
        "wer/reconstruction": rec,
        "wer/difference": rec - orig,
        "wer/num_utterances": float(len(keep)),
        "skipped/wer": float(len(with_text) - len(keep)),
    }


def _wer_panel(scalars: dict) -> dict:
    rows = [
        [audio, scalars.get(f"wer/{key}", float("nan"))]
        for audio, key in (
            ("original", "original"),
            ("reconstruction", "reconstruction"),
            ("reconstruction - original", "difference"),
        )
    ]
    return {
        "kind": "table",
        "title": "Intelligibility: pocketsphinx word error rate",
        "name": "wer",
        "columns": ["audio", "WER"],
        "rows": rows,
    }


def _latent_scalars(summary: dict) -> dict[str, float]:
    mean, std = summary["channel_mean"], summary["channel_std"]
    return {
        "latent/channel_mean_abs_max": float(np.max(np.abs(mean))),
        "latent/channel_std_mean": float(np.mean(std)),
        "latent/channel_std_min": float(np.min(std)),
        "latent/channel_std_max": float(np.max(std)),
        "latent/frame_rms_mean": summary["frame_rms_mean"],
        "latent/frame_rms_std": summary["frame_rms_std"],
    }


def _robustness_panel(curve: np.ndarray) -> dict:
    return {
        "kind": "xy",
        "title": "Robustness: mel distance of decode(z + sigma * eps)",
        "name": "robustness",
        "x_label": "sigma",
        "y_label": "mel distance",
        "across_steps": True,
        "series": {"mel distance": {"x": list(SIGMAS), "y": [float(v) for v in curve]}},
    }


def _latent_panel(summary: dict) -> dict:
    channels = list(range(len(summary["channel_mean"])))
    return {
        "kind": "xy",
        "title": "Latent channels: mean and std over the split's frames",
        "name": "latent_channels",
        "x_label": "channel",
        "y_label": "value",
        "markers": True,
        "series": {
            "mean": {"x": channels, "y": [float(v) for v in summary["channel_mean"]]},
            "std": {"x": channels, "y": [float(v) for v in summary["channel_std"]]},
        },
    }


def _transcript_panel(texts: list, hyps_orig: list, hyps_rec: list, ids: list) -> dict:
    shown = lambda hyp: "(skipped)" if hyp is None else hyp
    rows = [
        [ids[i], texts[i], shown(hyps_orig[i]), shown(hyps_rec[i])]
        for i in range(len(ids))
        if texts[i].strip()
    ][:NUM_TRANSCRIPT_ROWS]
    return {
        "kind": "table",
        "title": "pocketsphinx transcripts: original vs reconstruction",
        "name": "transcripts",
        "columns": ["id", "reference", "recognized (original)", "recognized (reconstruction)"],
        "rows": rows,
    }
