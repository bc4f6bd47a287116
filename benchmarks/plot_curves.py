"""Plot training curves from a workdir's train/metrics.jsonl into a PNG.

Usage:
    python benchmarks/plot_curves.py --workdir runs/ae_demo --out benchmarks/figures/ae_demo.png
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--keys", default="loss/mel,loss/stft,valid/mel_distance,valid/si_sdr")
    args = parser.parse_args()
    records = read_metrics(args.workdir)
    keys = [k for k in args.keys.split(",") if any(k in r for r in records)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = series(records, key)
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out} ({', '.join(keys)})")


if __name__ == "__main__":
    main()
