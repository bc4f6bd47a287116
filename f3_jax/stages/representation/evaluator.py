"""Stage-2 evaluation: RQ-MTP accuracy, linear probes, and transcription through the frozen LLM.

Per checkpoint:
- RQ-MTP accuracy per horizon and per codebook, cross-entropy, chance and the copy baseline,
  and the transcript negative log-likelihood: the trainer's eval_step, weighted over the
  split's real rows (as training's validation, but over the whole split);
- word error rate of greedy transcriptions through the frozen LLM for every utterance of the
  split that has a transcript (the trainer's validation transcribes only a few);
- linear probes (metrics/probe.py) for every numeric label of the records (the demo corpus's
  length_scale, noise_scale, noise_w, words_per_second): labels are continuous, so they are
  cut into `probe_bins` quantile classes with edges from the training labels. Features are
  the mean and std over time of the representations, and side by side of the raw stage-1
  latents (the probe's baseline: what the representation adds). Probes are fit on the first
  `probe_examples` utterances of data.train_split and scored on the evaluated split. The
  latent features do not depend on the checkpoint and are computed once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from f3_jax import parallel
from f3_jax.data import DataError
from f3_jax.evaluation import EvalOptions, EvalResult
from f3_jax.evaluation.aggregate import WeightedMeans
from f3_jax.evaluation.batches import device_batch, local_batches, real_rows, split_size
from f3_jax.evaluation.progress import EvalProgress
from f3_jax.metrics.probe import evaluate_probe
from f3_jax.metrics.wer import word_error_rate

LABEL_PREFIX = "label_"
NUM_TRANSCRIPT_ROWS = 8


@jax.jit
def pooled(x: jax.Array, mask: jax.Array) -> jax.Array:
    """(B, T, D) features, (B, T) mask -> (B, 2D): masked mean and std over time."""
    x = x.astype(jnp.float32)
    m = mask.astype(jnp.float32)[..., None]
    count = jnp.maximum(jnp.sum(m, axis=1), 1.0)
    mean = jnp.sum(x * m, axis=1) / count
    var = jnp.sum(jnp.square(x - mean[:, None]) * m, axis=1) / count
    return jnp.concatenate([mean, jnp.sqrt(var)], axis=-1)


class _Features:
    """Pooled features and labels of the real rows of one split."""

    def __init__(self) -> None:
        self.feats: list[np.ndarray] = []
        self.labels: dict[str, list[np.ndarray]] = {}

    def add(self, feats: np.ndarray, local: dict, rows: np.ndarray) -> None:
        self.feats.append(np.asarray(feats)[rows])
        for key, value in local.items():
            if key.startswith(LABEL_PREFIX):
                name = key[len(LABEL_PREFIX) :]
                self.labels.setdefault(name, []).append(np.asarray(value, np.float64)[rows])

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feats = np.concatenate(self.feats) if self.feats else np.zeros((0, 0), np.float32)
        return feats, {k: np.concatenate(v) for k, v in self.labels.items()}


class RepresentationEvaluator:
    """Evaluates stage-2 train states with the trainer's modules on the trainer's mesh."""

    def __init__(self, config, trainer, options: EvalOptions):
        self.config = config
        self.trainer = trainer
        self.options = options
        self._latents_jit = jax.jit(trainer.ae.latents)
        self._latent_features: dict[str, tuple] = {}  # split -> (feats, labels): fixed

    # ---- pieces --------------------------------------------------------------------------
    def _batches(self, split: str, max_examples: int | None):
        return local_batches(
            self.config, split, self.options.batch_size, max_examples, self.trainer.mesh
        )

    def _repr_features(self, state: dict, batch: dict) -> np.ndarray:
        r, fmask = self.trainer.represent(state, batch["audio"], batch["mask"])
        with jax.set_mesh(self.trainer.mesh):
            return parallel.to_host(pooled(r, fmask))

    def _latent_features_of(self, batch: dict) -> np.ndarray:
        with jax.set_mesh(self.trainer.mesh):
            z, fmask = self._latents_jit(self.trainer.ae.variables, batch["audio"], batch["mask"])
            return parallel.to_host(pooled(z, fmask))

    def _train_features(self, state: dict, progress) -> tuple[_Features, _Features | None]:
        """Probe training set: representation features, and latent features unless cached."""
        split = self.config.data.train_split
        reprs = _Features()
        lat = None if split in self._latent_features else _Features()
        total = split_size(self.config, split, self.options.probe_examples)
        mesh = self.trainer.mesh
        with progress.phase(f"probe features ({split} split)", total) as advance:
            for local in self._batches(split, self.options.probe_examples):
                rows = real_rows(local)
                batch = device_batch({k: local[k] for k in ("audio", "mask")}, mesh)
                reprs.add(self._repr_features(state, batch), local, rows)
                if lat is not None:
                    lat.add(self._latent_features_of(batch), local, rows)
                advance(len(rows))
        return reprs, lat

    def _evaluate_batch(self, state, local, means, reprs, lat, transcripts) -> None:
        """One eval batch: its metrics, features, and greedy transcripts of rows with text."""
        texts, hyps, ids = transcripts
        rows = real_rows(local)
        host = self.trainer.host_batch(local) | {"valid": local["valid"]}
        batch = device_batch(host, self.trainer.mesh)
        metrics, outputs = self.trainer.eval_step(state, batch)
        means.add(metrics, batch["valid"], self.trainer.mesh)
        reprs.add(self._repr_features(state, batch), local, rows)
        if lat is not None:
            lat.add(self._latent_features_of(batch), local, rows)
        with_text = [i for i in rows if str(local["text"][i]).strip()]
        if with_text:
            batch_hyps = self.trainer.transcribe(outputs)
            texts += [str(local["text"][i]) for i in with_text]
            hyps += [batch_hyps[i] for i in with_text]
            ids += [str(local["id"][i]) for i in with_text]

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(self, state: dict, step: int) -> EvalResult:
        split = self.options.split
        means = WeightedMeans()
        reprs, lat = _Features(), None if split in self._latent_features else _Features()
        texts, hyps, ids = [], [], []
        progress = EvalProgress(step, split)
        total = split_size(self.config, split, self.options.max_examples)
        with progress.phase("metrics and greedy transcriptions", total) as advance:
            for local in self._batches(split, self.options.max_examples):
                self._evaluate_batch(state, local, means, reprs, lat, (texts, hyps, ids))
                advance(len(real_rows(local)))
        if not reprs.feats or not sum(len(f) for f in reprs.feats):
            raise DataError(f"split {split!r} of {self.config.data.path} has no utterances")
        if lat is not None:
            self._latent_features[split] = lat.arrays()
        scalars = means.result()
        if texts:
            scalars["transcript/wer"] = word_error_rate(texts, hyps)
            scalars["transcript/num_utterances"] = float(len(texts))

        probes = {}
        if self.options.probe_examples > 0:
            train_reprs, train_lat = self._train_features(state, progress)
            if train_lat is not None:
                self._latent_features[self.config.data.train_split] = train_lat.arrays()
            probes = self._probes(train_reprs.arrays(), reprs.arrays())
        for label, result in probes.items():
            scalars |= {f"probe/{label}/{k}": v for k, v in result.items()}

        headline = {
            "rq_mtp/acc_h1": "higher",
            "rq_mtp/ce": "lower",
            "transcript/nll": "lower",
            "transcript/wer": "lower",
        }
        headline |= {f"probe/{label}/representation": "higher" for label in probes}
        panels = [_horizon_panel(scalars), _probe_panel(probes, self.options.probe_bins)]
        panels.append(_transcript_panel(ids, texts, hyps))
        return EvalResult(scalars, headline, [p for p in panels if p], sample_rate=0)

    def _probes(self, train: tuple, test: tuple) -> dict[str, dict[str, float]]:
        """Per label: test accuracy of probes on representations and on raw latents, chance."""
        (tr_repr, tr_labels), (te_repr, te_labels) = train, test
        tr_lat, _ = self._latent_features[self.config.data.train_split]
        te_lat, _ = self._latent_features[self.options.split]
        bins = self.options.probe_bins
        out = {}
        for name in sorted(set(tr_labels) & set(te_labels)):
            keep_tr, keep_te = np.isfinite(tr_labels[name]), np.isfinite(te_labels[name])
            if keep_tr.sum() < 2 * bins or not keep_te.any():
                continue  # too few labelled examples for quantile classes
            y_tr, y_te = tr_labels[name][keep_tr], te_labels[name][keep_te]
            result = {}
            for kind, x_tr, x_te in (
                ("representation", tr_repr, te_repr),
                ("latent", tr_lat, te_lat),
            ):
                r = evaluate_probe(x_tr[keep_tr], y_tr, x_te[keep_te], y_te, num_bins=bins)
                result[kind] = r["accuracy"]
                result["chance"] = r["chance"]
                result["num_train"], result["num_test"] = (
                    float(r["num_train"]),
                    float(r["num_test"]),
                )
            out[name] = result
        return out


def _horizon_panel(scalars: dict) -> dict | None:
    horizons = sorted(
        int(k[len("rq_mtp/acc_h") :])
        for k in scalars
        if k.startswith("rq_mtp/acc_h") and k[len("rq_mtp/acc_h") :].isdigit()
    )
    if not horizons:
        return None
    series = {"accuracy": [scalars[f"rq_mtp/acc_h{h}"] for h in horizons]}
    series["chance"] = [scalars.get("rq_mtp/chance", float("nan"))] * len(horizons)
    if "rq_mtp/copy_baseline_h1" in scalars:  # the copy baseline exists for horizon 1 only
        series["copy baseline"] = [scalars["rq_mtp/copy_baseline_h1"]] + [float("nan")] * (
            len(horizons) - 1
        )
    return {
        "kind": "bars",
        "title": "RQ-MTP accuracy per horizon (mean over codebooks)",
        "name": "rq_mtp_horizons",
        "categories": [f"t+{h}" for h in horizons],
        "y_label": "accuracy",
        "series": series,
    }


def _probe_panel(probes: dict, bins: int) -> dict | None:
    if not probes:
        return None
    labels = sorted(probes)
    names = {
        "representation": "representation",
        "latent": "raw latents",
        "chance": "majority class",
    }
    first = probes[labels[0]]
    counts = f"fit on {first['num_train']:.0f} training examples, scored on {first['num_test']:.0f}"
    return {
        "kind": "bars",
        "title": f"Linear probes ({counts}): test accuracy, {bins} quantile classes "
        f"(guessing: {1 / bins:g})",
        "name": "probes",
        "categories": labels,
        "y_label": "accuracy",
        "series": {name: [probes[label][kind] for label in labels] for kind, name in names.items()},
    }


def _transcript_panel(ids: list, texts: list, hyps: list) -> dict | None:
    if not texts:
        return None
    rows = [[i, t, h] for i, t, h in zip(ids, texts, hyps)][:NUM_TRANSCRIPT_ROWS]
    return {
        "kind": "table",
        "title": "Greedy transcripts through the frozen LLM",
        "name": "transcripts",
        "columns": ["id", "reference", "greedy"],
        "rows": rows,
    }
