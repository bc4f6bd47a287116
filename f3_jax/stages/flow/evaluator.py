"""Stage-3 evaluation: flow loss, teacher-forced reconstructions, and speech from held-out text.

Per checkpoint:
- the trainer's eval_step over the split (weighted over real rows): flow-matching loss next to
  the exact velocity of a per-channel Gaussian fitted to the batch's patches, teacher-forced
  sample latent MSE next to predicting the mean patch, the mel distance of audio decoded from
  teacher-forced samples, and the stop head's accuracy;
- generation from every held-out transcript of the split (text to speech, seeds 0, 1, ...):
  word error rate of the offline recognizer (pocketsphinx) on the generated speech, next to its
  WER on the split's original recordings of the same texts (computed once), the real-time
  factor, the generated length and how often the stop head (not the length cap) ended it.
  Texts whose original recording the recognizer skips (silent, too short, or it raised) are
  left out of both WERs and counted (`skipped/wer`); generated speech it skips counts as
  recognized as nothing, since that is the model's doing.
"""

from __future__ import annotations

import numpy as np

from f3_jax import parallel
from f3_jax.evaluation import EvalOptions, EvalResult
from f3_jax.evaluation.aggregate import WeightedMeans
from f3_jax.evaluation.batches import clips, device_batch, local_batches, real_rows, split_size
from f3_jax.evaluation.progress import EvalProgress
from f3_jax.metrics.recognizer import transcribe
from f3_jax.metrics.wer import word_error_rate

NUM_AUDIO = 2  # generated utterances kept as audio and spectrogram pairs
NUM_TRANSCRIPT_ROWS = 8


class FlowEvaluator:
    """Evaluates stage-3 train states with the trainer's frozen modules and generator."""

    def __init__(self, config, trainer, options: EvalOptions):
        self.config = config
        self.trainer = trainer
        self.options = options
        # split -> recognizer output on the originals (None: skipped)
        self._reference: dict[str, list[str | None]] = {}

    def _generate(self, params: dict, texts: list[str], progress) -> list[dict]:
        gen = self.trainer.generator()
        outs = []
        with progress.phase("generation from held-out texts", len(texts), "utterances") as advance:
            for i, text in enumerate(texts):
                outs.append(gen.generate(params, text, seed=i))
                advance()
        return outs

    def evaluate(self, state: dict, step: int) -> EvalResult:
        split, t = self.options.split, self.trainer
        means = WeightedMeans()
        texts, ids, originals = [], [], []
        progress = EvalProgress(step, split)
        total = split_size(self.config, split, self.options.max_examples)
        o = self.options
        batches = local_batches(self.config, split, o.batch_size, o.max_examples, self.trainer.mesh)
        with progress.phase("teacher-forced metrics", total) as advance:
            for local in batches:
                host = t.host_batch(local) | {"valid": local["valid"]}
                batch = device_batch(host, t.mesh)
                metrics, _ = t.eval_step(state, batch)
                means.add(metrics, batch["valid"], t.mesh)
                rows = [i for i in real_rows(local) if str(local["text"][i]).strip()]
                texts += [str(local["text"][i]) for i in rows]
                ids += [str(local["id"][i]) for i in rows]
                originals += clips(local["audio"], local["mask"], np.asarray(rows, int))
                advance(len(real_rows(local)))
        scalars = means.result()
        outs = self._generate(parallel.to_host(state["params"]), texts, progress)
        sr, threads = self.config.sample_rate, self.options.num_threads
        with progress.phase("recognizer", len(outs), "utterances") as advance:
            hyps = transcribe([o["audio"] for o in outs], sr, threads) if outs else []
            if split not in self._reference:
                self._reference[split] = transcribe(originals, sr, threads) if originals else []
            advance(len(outs))
        scalars |= _generation_scalars(texts, outs, hyps, self._reference[split])
        headline = {
            "flow/loss": "lower",
            "flow/teacher_forced_mel_distance": "lower",
            "generation/wer": "lower",
        }
        audio = {
            f"generated/{ids[i]}": {"original": originals[i], "generated": outs[i]["audio"]}
            for i in range(min(NUM_AUDIO, len(outs)))
        }
        panels = [_loss_panel(scalars), _transcript_panel(ids, texts, hyps)]
        return EvalResult(scalars, headline, [p for p in panels if p], audio=audio, sample_rate=sr)


def _generation_scalars(
    texts: list[str], outs: list[dict], hyps: list, reference: list
) -> dict[str, float]:
    """WERs over the texts whose original the recognizer did not skip (reference None), a
    skipped generation counting as ''; and length, speed and stop statistics of all."""
    if not texts:
        return {}
    keep = [i for i, ref in enumerate(reference) if ref is not None]
    kept = [texts[i] for i in keep]
    return {
        "generation/wer": word_error_rate(kept, [hyps[i] or "" for i in keep]),
        "generation/wer_original_audio": word_error_rate(kept, [reference[i] for i in keep]),
        "skipped/wer": float(len(texts) - len(keep)),
        "generation/x_real_time": float(np.mean([o["x_real_time"] for o in outs])),
        "generation/seconds": float(np.mean([o["seconds"] for o in outs])),
        "generation/stopped_fraction": float(np.mean([o["stopped"] for o in outs])),
        "generation/num_utterances": float(len(texts)),
    }


def _loss_panel(scalars: dict) -> dict | None:
    if "flow/loss" not in scalars:
        return None
    return {
        "kind": "bars",
        "title": "Flow-matching loss and latent MSE against their baselines",
        "name": "flow_baselines",
        "categories": ["flow loss", "teacher-forced latent MSE"],
        "y_label": "value",
        "series": {
            "model": [scalars["flow/loss"], scalars["flow/teacher_forced_latent_mse"]],
            "baseline (Gaussian / mean patch)": [
                scalars["flow/gaussian_baseline"],
                scalars["flow/mean_patch_latent_mse"],
            ],
        },
    }


def _transcript_panel(ids: list, texts: list, hyps: list) -> dict | None:
    if not texts:
        return None
    rows = [[i, t, h or ""] for i, t, h in zip(ids, texts, hyps)][:NUM_TRANSCRIPT_ROWS]
    return {
        "kind": "table",
        "title": "Held-out transcripts spoken by the model, as the recognizer heard them",
        "name": "generated_transcripts",
        "columns": ["id", "text", "recognized from the generated speech"],
        "rows": rows,
    }
