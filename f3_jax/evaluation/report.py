"""WORKDIR/eval/report.md: a self-contained Markdown report with PNG figures in eval/figures/.

Rebuilt from the eval files (store.py) after every evaluation, so it always covers every
evaluated step. Per split: a table of the headline metrics (latest value, the previous
evaluation, the best and the first, with which way is better), their curves against the step,
then the latest step's panels, then every scalar of the latest step.

Panels are JSON dicts made by the evaluators, of these kinds:
  {"kind": "table", "title", "name", "columns": [...], "rows": [[...], ...]}
  {"kind": "xy", "title", "name", "x_label", "y_label", "series": {label: {"x": [], "y": []}},
   "across_steps": bool (one curve per evaluated step, from each step's panel of this name),
   "markers": bool}
  {"kind": "bars", "title", "name", "categories": [...], "y_label", "series": {label: [...]}}
  {"kind": "images", "title", "name", "paths": [paths relative to eval/], "captions": [...]}
"""

from __future__ import annotations

import datetime
import io
import math
import os

import numpy as np

from f3_jax import storage
from f3_jax.evaluation.store import EvalStore

ARROWS = {"lower": "↓", "higher": "↑"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str, **kwargs) -> None:
    """A matplotlib figure as a PNG at `path` (local or remote), written whole."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    storage.write_bytes(path, buf.getvalue())


def fmt(value) -> str:
    """A number for a table: 4 significant digits, '–' for missing or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float | int | np.floating | np.integer):
        value = float(value)
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


# ---- figures ---------------------------------------------------------------------------
def save_spectrograms(audio: dict, sample_rate: int, store: EvalStore, split: str, step: int):
    """One PNG per example, its clips (e.g. original above reconstruction, or above the
    generated speech) one per row, titled by their keys; returns an images panel."""
    from PIL import Image

    from f3_jax.summary import mel_image

    paths, captions = [], []
    for i, (name, pair) in enumerate(audio.items()):
        rel = os.path.join("figures", f"spectrogram_{split}_{step}_{i}.png")
        buf = io.BytesIO()
        Image.fromarray(mel_image(pair, sample_rate)).save(buf, format="png")
        storage.write_bytes(os.path.join(store.directory, rel), buf.getvalue())
        paths.append(rel)
        captions.append(str(name))
    kinds = " / ".join(next(iter(audio.values()))) if audio else ""
    return {
        "kind": "images",
        "title": f"Log-mel spectrograms: {kinds} (step {step})",
        "name": "spectrograms",
        "paths": paths,
        "captions": captions,
    }


def _curves_figure(history: dict, names: list[str], split: str, path: str) -> None:
    plt = _plt()
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        points = [(s, v[f"{split}/{name}"]) for s, v in history.items() if f"{split}/{name}" in v]
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    _save_figure(fig, path, dpi=90)
    plt.close(fig)


def _xy_figure(panel: dict, by_step: dict[int, dict], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if panel.get("across_steps"):
        steps = sorted(by_step)
        colors = plt.cm.viridis(np.linspace(0, 1, max(len(steps), 2)))
        for color, step in zip(colors, steps):
            for label, s in by_step[step]["series"].items():
                name = f"step {step}" if len(by_step[step]["series"]) == 1 else f"{label}, {step}"
                ax.plot(s["x"], s["y"], marker="o", markersize=3, color=color, label=name)
    else:
        for label, s in panel["series"].items():
            style = {
                "marker": "o",
                "markersize": 3,
                "linestyle": "-" if not panel.get("markers") else "",
            }
            ax.plot(s["x"], s["y"], label=label, **style)
    ax.set_xlabel(panel.get("x_label", ""))
    ax.set_ylabel(panel.get("y_label", ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path, dpi=90)
    plt.close(fig)


def _bars_figure(panel: dict, path: str) -> None:
    plt = _plt()
    cats, series = panel["categories"], panel["series"]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(cats) + 2), 3.4))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(cats))
    for i, (label, values) in enumerate(series.items()):
        values = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, cats, fontsize=8)
    ax.set_ylabel(panel.get("y_label", ""))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path, dpi=90)
    plt.close(fig)


# ---- markdown --------------------------------------------------------------------------
def markdown_table(columns: list, rows: list) -> list[str]:
    lines = ["| " + " | ".join(fmt(c) for c in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def _headline_rows(history: dict, split: str, headline: dict) -> list[list]:
    rows = []
    for name, better in headline.items():
        key = f"{split}/{name}"
        points = [(s, v[key]) for s, v in history.items() if key in v]
        if not points:
            continue
        finite = [(s, v) for s, v in points if v is not None and math.isfinite(v)]
        pick = min if better == "lower" else max
        best = pick(finite, key=lambda p: p[1]) if finite else None
        prev = points[-2] if len(points) > 1 else None
        rows.append(
            [
                name,
                ARROWS.get(better, ""),
                fmt(points[-1][1]),
                f"{fmt(prev[1])} (step {prev[0]})" if prev else "–",
                f"{fmt(best[1])} (step {best[0]})" if best else "–",
                f"{fmt(points[0][1])} (step {points[0][0]})",
            ]
        )
    return rows


def _panel_markdown(panel: dict, store: EvalStore, split: str, by_step: dict) -> list[str]:
    lines = [f"### {panel['title']}", ""]
    kind, name = panel["kind"], panel.get("name", "panel")
    rel = os.path.join("figures", f"{name}_{split}.png")
    if kind == "table":
        lines += markdown_table(panel["columns"], panel["rows"]) if panel["rows"] else ["(none)"]
    elif kind == "xy":
        _xy_figure(panel, by_step, os.path.join(store.directory, rel))
        lines.append(f"![{panel['title']}]({rel})")
        if panel.get("across_steps"):  # the latest values as numbers too
            s = next(iter(panel["series"].values()))
            lines += [
                "",
                *markdown_table([panel.get("x_label", "x"), *s["x"]], [["latest", *s["y"]]]),
            ]
    elif kind == "bars":
        _bars_figure(panel, os.path.join(store.directory, rel))
        lines.append(f"![{panel['title']}]({rel})")
        rows = [[label, *values] for label, values in panel["series"].items()]
        lines += ["", *markdown_table(["", *panel["categories"]], rows)]
    elif kind == "images":
        for path, caption in zip(panel["paths"], panel.get("captions", panel["paths"])):
            lines += [f"**{fmt(caption)}**", "", f"![{fmt(caption)}]({path})", ""]
    return lines + [""]


def _split_section(store: EvalStore, history: dict, split: str) -> list[str]:
    details = store.details(split)
    if not details:
        return []
    latest_step = max(details)
    latest = details[latest_step]
    headline = dict(latest.get("headline", []))
    lines = [f"## Split `{split}`: latest step {latest_step}", ""]
    lines.append(f"Evaluated steps: {', '.join(str(s) for s in store.evaluated(split))}.")
    lines += ["", "### Headline metrics", ""]
    cols = ["metric", "better", f"step {latest_step}", "previous", "best", "first"]
    lines += markdown_table(cols, _headline_rows(history, split, headline))
    names = [n for n in headline if any(f"{split}/{n}" in v for v in history.values())]
    if names and len(store.evaluated(split)) >= 2:  # one point makes no curve
        rel = os.path.join("figures", f"curves_{split}.png")
        _curves_figure(history, names, split, os.path.join(store.directory, rel))
        lines += ["", f"![headline metrics against the training step]({rel})", ""]
    for panel in latest.get("panels", []):
        same = {
            s: p
            for s, d in details.items()
            for p in d.get("panels", [])
            if p.get("name") == panel.get("name")
        }
        lines += _panel_markdown(panel, store, split, same)
    values = history.get(latest_step, {})
    rows = [
        [k[len(split) + 1 :], v] for k, v in sorted(values.items()) if k.startswith(f"{split}/")
    ]
    lines += [f"### All metrics at step {latest_step}", ""]
    lines += [f"<details><summary>{len(rows)} metrics</summary>", ""]
    lines += markdown_table(["metric", "value"], rows)
    return lines + ["", "</details>", ""]


def write_report(store: EvalStore, *, workdir: str, stage: str) -> str:
    """Writes eval/report.md (and its figures) from the eval files; returns its path."""
    history = store.metrics()
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "# Evaluation report",
        "",
        f"Workdir `{workdir}`, stage `{stage}`, updated {now}. Written by `python -m f3_jax.eval`;"
        " every number is also in `metrics.json` and TensorBoard (`eval/`).",
        "",
    ]
    for split in store.splits():
        lines += _split_section(store, history, split)
    path = os.path.join(store.directory, "report.md")
    storage.write_text(path, "\n".join(lines))
    return path
