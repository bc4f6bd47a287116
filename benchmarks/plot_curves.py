"""Plot training curves from a workdir's train/metrics.jsonl into a PNG.

Usage:
    python benchmarks/plot_curves.py --workdir runs/ae_demo --out benchmarks/figures/ae_demo.png

A stage-1 run's `train.adversarial_start` (read from its export's config) is marked on every
panel: the losses change character when the discriminators start.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "train", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def adversarial_start(workdir: str) -> int | None:
    """The step the discriminators started at, from the export's config (stage 1 only)."""
    try:
        with open(os.path.join(workdir, "export", "config.json")) as f:
            config = json.load(f)["config"]
    except (OSError, ValueError, KeyError):
        return None
    start = config.get("train", {}).get("adversarial_start")
    return int(start) if config.get("stage") == "autoencoder" and start else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--keys", default="loss/mel,loss/stft,valid/mel_distance,valid/si_sdr")
    args = parser.parse_args()
    records = read_metrics(args.workdir)
    gan = adversarial_start(args.workdir)
    keys = [k for k in args.keys.split(",") if any(k in r for r in records)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = series(records, key)
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        if gan is not None and steps and steps[0] < gan <= steps[-1]:
            ax.axvline(gan, color="gray", linestyle="--", linewidth=1, label="discriminators on")
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out} ({', '.join(keys)})")


if __name__ == "__main__":
    main()
