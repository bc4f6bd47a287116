"""Stage 1's report panels and derived scalars (the evaluator's presentation).

Panels are the report's JSON dicts (f3_jax/evaluation/report.py): tables, xy curves.
"""

from __future__ import annotations

import numpy as np

from f3_jax.metrics.wer import word_error_rate

NUM_TRANSCRIPT_ROWS = 8  # transcripts shown in the report


def wer_scalars(texts: list, hyps_orig: list, hyps_rec: list) -> dict[str, float]:
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


def wer_panel(scalars: dict) -> dict:
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


def latent_scalars(summary: dict) -> dict[str, float]:
    mean, std = summary["channel_mean"], summary["channel_std"]
    return {
        "latent/channel_mean_abs_max": float(np.max(np.abs(mean))),
        "latent/channel_std_mean": float(np.mean(std)),
        "latent/channel_std_min": float(np.min(std)),
        "latent/channel_std_max": float(np.max(std)),
        "latent/frame_rms_mean": summary["frame_rms_mean"],
        "latent/frame_rms_std": summary["frame_rms_std"],
    }


def robustness_panel(sigmas, curve: np.ndarray, relative: bool = False) -> dict:
    """The mel distance of decode(z + sigma * eps) against sigma: absolute, or (relative) with
    sigma in units of the split's latent std (so that latents of any scale compare)."""
    unit = "sigma / latent std" if relative else "sigma"
    return {
        "kind": "xy",
        "title": f"Robustness: mel distance of decode(z + sigma * eps), {unit}",
        "name": "robustness_relative" if relative else "robustness",
        "x_label": unit,
        "y_label": "mel distance",
        "across_steps": True,
        "series": {"mel distance": {"x": list(sigmas), "y": [float(v) for v in curve]}},
    }


def generability_panel(scalars: dict, patch_frames: int) -> dict:
    rows = [
        [name, scalars.get(f"generability/{key}", float("nan"))]
        for name, key in (
            ("small AR model (MLP)", "nmse"),
            ("copy the last frame", "copy_nmse"),
        )
    ]
    n_train = scalars.get("generability/num_train", 0.0)
    n_test = scalars.get("generability/num_test", 0.0)
    return {
        "kind": "table",
        "title": f"Generability: next {patch_frames}-frame patch error / latent variance "
        f"({n_train:.0f} training windows, {n_test:.0f} held out; 1 = the mean)",
        "name": "generability",
        "columns": ["predictor", "normalized MSE"],
        "rows": rows,
    }


def latent_panel(summary: dict) -> dict:
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


def transcript_panel(texts: list, hyps_orig: list, hyps_rec: list, ids: list) -> dict:
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
