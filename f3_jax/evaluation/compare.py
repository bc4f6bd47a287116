"""A side-by-side report of several evaluated workdirs of one stage (the paper's comparisons).

Reads what `python -m f3_jax.eval` wrote under each WORKDIR/eval/ (store.py): for one split,
each run's latest evaluated step (or the last one at or before `step`), its scalars and its
panels. Writes OUT/report.md with PNGs in OUT/figures/ and OUT/comparison.json:
- the headline metrics, one column per run, the best of each row in bold;
- every xy panel that the runs share, their curves overlaid in one figure (stage 1: the
  robustness curve against the absolute sigma and against sigma in units of each run's latent
  std, the per-channel latent mean and std), with the numbers below;
- every table panel, the runs' rows one after another with the run's name in front (stage 1:
  generability, WER; stage 2: the linear probes);
- every scalar of each run, side by side.
Runs of different stages do not compare: CompareError names the odd one out.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from f3_jax import storage
from f3_jax.errors import UserError
from f3_jax.evaluation import report
from f3_jax.evaluation.checkpoints import CheckpointReader
from f3_jax.evaluation.store import EVAL_DIR, EvalStore, read_json, write_json


class CompareError(UserError):
    """Runs that cannot be compared: not evaluated, or of different stages."""


@dataclass
class Run:
    """One evaluated workdir, at the step compared."""

    name: str
    workdir: str
    stage: str
    step: int
    scalars: dict  # without the "<split>/" prefix
    headline: list  # [(name, "lower" | "higher")]
    panels: list


def _stage_of(workdir: str, details: dict, step: int) -> str:
    """The stage the eval recorded, else that of the run's saved config."""
    if details.get("stage"):
        return str(details["stage"])
    reader = CheckpointReader(workdir)
    try:
        steps = reader.steps()
        if steps:
            return str(reader.saved_config(steps[-1])["config"]["stage"])
    finally:
        reader.close()
    raise CompareError(f"{workdir}: cannot tell its stage (no checkpoint and no stage in eval/)")


def evaluated_splits(workdir: str) -> set[str]:
    """The splits evaluated in WORKDIR/eval/; CompareError when there is no evaluation."""
    text = storage.read_text(os.path.join(workdir, EVAL_DIR, "evaluated.json"))
    if text is None:
        raise CompareError(
            f"{workdir} has no evaluation: run python -m f3_jax.eval --config ... "
            f"--workdir {workdir} first"
        )
    return set(json.loads(text))


def load_run(workdir: str, name: str, split: str, step: int | None = None) -> Run:
    """The run's evaluation at `step` (default: its latest) on `split`."""
    evaluated_splits(workdir)
    store = EvalStore(workdir)
    details = store.details(split)
    steps = [s for s in details if step is None or s <= step]
    if not steps:
        at = "" if step is None else f" at or before step {step}"
        raise CompareError(f"{workdir} has no evaluation of split {split!r}{at}")
    chosen = max(steps)
    d = details[chosen]
    prefix = f"{split}/"
    values = store.metrics().get(chosen, {})
    scalars = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
    return Run(
        name, workdir, _stage_of(workdir, d, chosen), chosen, scalars,
        [tuple(h) for h in d.get("headline", [])], d.get("panels", []),
    )  # fmt: skip


def check_same_stage(runs: list[Run]) -> str:
    """The runs' common stage; CompareError naming the first run of another stage."""
    stage = runs[0].stage
    for r in runs[1:]:
        if r.stage != stage:
            raise CompareError(
                f"{r.workdir} is a {r.stage!r} run and {runs[0].workdir} a {stage!r} run: "
                "compare runs of one stage"
            )
    return stage


def _is_better(a: float, b: float, better: str) -> bool:
    return a < b if better == "lower" else a > b


def headline_table(runs: list[Run]) -> list[str]:
    """Headline metrics (the union, in first-seen order), a column per run, best in bold."""
    order: dict[str, str] = {}
    for r in runs:
        for name, better in r.headline:
            order.setdefault(name, better)
    rows = []
    for name, better in order.items():
        values = [r.scalars.get(name) for r in runs]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        best = None
        for v in finite:
            best = v if best is None or _is_better(v, best, better) else best
        cells = [
            f"**{report.fmt(v)}**" if v is not None and v == best and len(finite) > 1
            else report.fmt(v)
            for v in values
        ]  # fmt: skip
        rows.append([name, report.ARROWS.get(better, ""), *cells])
    columns = ["metric", "better", *[f"{r.name} (step {r.step})" for r in runs]]
    # the cells are already formatted (bold): the table keeps them as they are
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _panels_by_name(runs: list[Run], kind: str) -> dict[str, list]:
    """{panel name: [(run, panel) for each run that has it]}, in first-seen order."""
    out: dict[str, list] = {}
    for r in runs:
        for p in r.panels:
            if p.get("kind") == kind:
                out.setdefault(p.get("name", "panel"), []).append((r, p))
    return out


def overlay_figure(pairs: list, path: str) -> None:
    """The series of one xy panel of several runs in one figure: a color per run, a line
    style per series."""
    plt = report._plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colors = plt.cm.tab10(np.arange(len(pairs)) % 10)
    styles = ["-", "--", ":", "-."]
    first = pairs[0][1]
    for color, (run, panel) in zip(colors, pairs):
        series = panel["series"]
        for i, (label, s) in enumerate(series.items()):
            name = run.name if len(series) == 1 else f"{run.name}: {label}"
            y = [np.nan if v is None else v for v in s["y"]]
            ax.plot(s["x"], y, marker="o", markersize=3, color=color,
                    linestyle=styles[i % len(styles)], label=name)  # fmt: skip
    ax.set_xlabel(first.get("x_label", ""))
    ax.set_ylabel(first.get("y_label", ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    report._save_figure(fig, path, dpi=90)
    plt.close(fig)


def _xy_section(name: str, pairs: list, out: str) -> list[str]:
    rel = os.path.join("figures", f"{name}.png")
    overlay_figure(pairs, os.path.join(out, rel))
    title = pairs[0][1]["title"]
    lines = [f"### {title}", "", f"![{title}]({rel})", ""]
    xs = next(iter(pairs[0][1]["series"].values()))["x"]
    if len(xs) <= 12:  # short curves (robustness): their numbers too
        rows = [
            [run.name if len(p["series"]) == 1 else f"{run.name}: {label}", *s["y"]]
            for run, p in pairs
            for label, s in p["series"].items()
        ]
        lines += report.markdown_table([pairs[0][1].get("x_label", "x"), *xs], rows) + [""]
    return lines


def _table_section(pairs: list) -> list[str]:
    first = pairs[0][1]
    rows = [[run.name, *row] for run, p in pairs for row in p["rows"]]
    lines = [f"### {first['title']}", ""]
    lines += report.markdown_table(["run", *first["columns"]], rows) if rows else ["(none)"]
    return lines + [""]


def _all_scalars(runs: list[Run]) -> list[str]:
    names = sorted({k for r in runs for k in r.scalars})
    rows = [[k, *[r.scalars.get(k) for r in runs]] for k in names]
    lines = ["## Every metric", "", f"<details><summary>{len(names)} metrics</summary>", ""]
    lines += report.markdown_table(["metric", *[r.name for r in runs]], rows)
    return lines + ["", "</details>", ""]


# Panels left out of a comparison: per-utterance examples, not a property of the run.
SKIPPED_PANELS = ("transcripts", "spectrograms")


def write_comparison(runs: list[Run], out: str, split: str, title: str = "") -> str:
    """OUT/report.md, OUT/figures/*.png and OUT/comparison.json; returns the report's path."""
    stage = check_same_stage(runs)
    storage.ensure_dir(os.path.join(out, "figures"))
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"# {title or f'Comparison of {len(runs)} {stage} runs'}", ""]
    lines += [f"Stage `{stage}`, split `{split}`, written {now} by `python -m f3_jax.compare`.", ""]
    lines += report.markdown_table(
        ["run", "workdir", "step"], [[r.name, f"`{r.workdir}`", r.step] for r in runs]
    )
    lines += ["", "## Headline metrics", "", *headline_table(runs), ""]
    for name, pairs in _panels_by_name(runs, "xy").items():
        if name not in SKIPPED_PANELS:
            lines += _xy_section(name, pairs, out)
    for name, pairs in _panels_by_name(runs, "table").items():
        if name not in SKIPPED_PANELS:
            lines += _table_section(pairs)
    lines += _all_scalars(runs)
    path = os.path.join(out, "report.md")
    storage.write_text(path, "\n".join(lines))
    summary = {
        "stage": stage,
        "split": split,
        "runs": [{"name": r.name, "workdir": r.workdir, "step": r.step} for r in runs],
        "scalars": {r.name: r.scalars for r in runs},
    }
    write_json(os.path.join(out, "comparison.json"), summary)
    return path


def read_comparison(out: str) -> dict:
    """OUT/comparison.json as written (null values for non-finite numbers)."""
    return read_json(os.path.join(out, "comparison.json"), {})


def common_split(workdirs: list[str]) -> str:
    """The first split (alphabetically) that every workdir has evaluated."""
    shared = sorted(set.intersection(*[evaluated_splits(w) for w in workdirs]))
    if not shared:
        raise CompareError(f"no split is evaluated in every one of {', '.join(workdirs)}")
    return shared[0]


def run_names(workdirs: list[str], names: list[str] | None) -> list[str]:
    """The names shown for the runs: given, else each workdir's last path component (made
    unique with its position when two are the same)."""
    if names:
        if len(names) != len(workdirs):
            raise CompareError(f"--names has {len(names)} names for {len(workdirs)} workdirs")
        return list(names)
    base = [os.path.basename(os.path.normpath(str(w))) or str(w) for w in workdirs]
    return [b if base.count(b) == 1 else f"{b}#{i}" for i, b in enumerate(base)]


def compare(
    workdirs: list[str], out: str, *, split: str | None = None, names: list[str] | None = None,
    step: int | None = None, title: str = "",
) -> str:  # fmt: skip
    """Loads every run, checks they are of one stage, writes the comparison; its path."""
    if len(workdirs) < 2:
        raise CompareError(f"compare needs two workdirs or more, got {len(workdirs)}")
    labels = run_names(workdirs, names)
    split = split or common_split(workdirs)
    runs = [load_run(w, n, split, step) for w, n in zip(workdirs, labels)]
    return write_comparison(runs, out, split, title)
