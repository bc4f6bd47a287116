"""Sweep of `python -m f3_jax.aot_compile` over configs x TPU topologies, and its table.

    python benchmarks/aot_sweep.py run --cells ae_24k@v5e:4x4,repr_24k@v6e:8x8 \
        [--programs train] [--out benchmarks/reports/aot] [--extra --config.train.batch_size=64]
    python benchmarks/aot_sweep.py largest --cells repr_24k@v5p:2x4x4 [--out ...]
    python benchmarks/aot_sweep.py table [--write] [--out benchmarks/reports/aot]

`run` compiles each cell in its own process (libtpu: pip install -e ".[tpu]"), one after the
other, and keeps each report as OUT/<config>@<topology>[+<tag>].json; a cell whose JSON exists
is skipped, so an interrupted sweep resumes. `table` prints README's "What fits where" tables
and RESULTS.md's from those files (`aot_tables.py`: compile status, memory per chip against
HBM, the roofline estimate of the step time and MFU, an estimate from the compiler's counts,
not a measurement, and the largest collective); `--write` puts them in place. `largest`
finds, per cell, the largest per-chip batch (a power of two) whose train step fits: from the
config's own per-chip batch it doubles while the step fits and halves while it does not, each
trial `aot_compile --memory_only` (the compiler's buffer assignment: minutes instead of a
full compile), kept as OUT/<cell>+b<N>pc.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

try:  # run as a script: benchmarks/ is on sys.path
    import aot_tables
except ImportError:
    from benchmarks import aot_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cell_path(out: str, cell: str, tag: str) -> str:
    name = cell.replace(":", "_") + (f"+{tag}" if tag else "")
    return os.path.join(out, f"{name}.json")


def run(cells: list[str], programs: str, out: str, extra: list[str], tag: str) -> None:
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, TPU_ACCELERATOR_TYPE="v5litepod-4", TPU_WORKER_HOSTNAMES="localhost")
    for cell in cells:
        config, topology = cell.split("@")
        path = _cell_path(out, cell, tag)
        if os.path.exists(path):
            print(f"{cell}: done before ({path})", flush=True)
            continue
        cmd = [
            sys.executable, "-m", "f3_jax.aot_compile", f"--config=configs/{config}.py",
            f"--topology={topology}", f"--json={path}", *extra,
        ]  # fmt: skip
        if programs:
            cmd.append(f"--programs={programs}")
        start = time.perf_counter()
        print(f"{cell}: {' '.join(cmd[2:])}", flush=True)
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        print(done.stdout[-3000:], flush=True)
        if done.returncode:
            print(f"{cell}: exit {done.returncode}: {done.stderr.strip()[-1500:]}", flush=True)
        elif os.path.exists(path):
            label(path, tag, extra)
        print(f"{cell}: {time.perf_counter() - start:.0f} s", flush=True)


def _fits(path: str) -> bool | None:
    """The train step's verdict in a cell's JSON; None when it did not compile or assign."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        train = json.load(f)["programs"]["train"]
    if train["status"] not in ("compiled", "assigned", "does not fit"):
        return None
    return train["verdict"].startswith("fits")


def largest(cells: list[str], out: str, extra: list[str]) -> dict[str, int | None]:
    """{cell: the largest per-chip batch (power of two) that fits, None if even 1 does not}."""
    from f3_jax.aot.stage import load_config_file

    found = {}
    for cell in cells:
        config_name, topology = cell.split("@")
        config = load_config_file(os.path.join(ROOT, "configs", f"{config_name}.py"))
        count = aot_tables.chips(topology)
        per_chip = max(1, int(config.train.batch_size) // count)
        verdicts: dict[int, bool] = {}
        while per_chip not in verdicts and 1 <= per_chip <= 1024:
            tag = f"b{per_chip}pc"
            size = [f"--config.train.batch_size={per_chip * count}"]
            run([cell], "train", out, [*size, "--memory_only", *extra], tag)
            fits = _fits(_cell_path(out, cell, tag))
            if fits is None:
                break
            verdicts[per_chip] = fits
            per_chip = per_chip * 2 if fits else per_chip // 2
        fitting = [b for b, ok in verdicts.items() if ok]
        found[cell] = max(fitting) if fitting else None
        print(f"{cell}: largest per-chip batch that fits: {found[cell]} ({verdicts})", flush=True)
    return found


def label(path: str, tag: str, extra: list[str]) -> None:
    """Records the variant (its tag and config overrides) in the cell's JSON."""
    with open(path) as f:
        result = json.load(f)
    result["variant"] = {"tag": tag, "overrides": extra}
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "largest", "table"))
    parser.add_argument("--cells", default="", help="config@topology,... (configs/ names)")
    parser.add_argument("--programs", default="", help="only these programs (default: all)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "reports", "aot"))
    parser.add_argument("--tag", default="", help="suffix of the JSON names (a variant)")
    parser.add_argument(
        "--write", action="store_true",
        help="table: rewrite README's and RESULTS.md's tables between their markers",
    )  # fmt: skip
    args, extra = parser.parse_known_args()
    if args.command == "run":
        run([c for c in args.cells.split(",") if c], args.programs, args.out, extra, args.tag)
    elif args.command == "largest":
        largest([c for c in args.cells.split(",") if c], args.out, extra)
    elif args.write:
        changed = aot_tables.write(reports=args.out)
        print(f"rewrote {', '.join(changed)}" if changed else "the tables were up to date")
    else:
        results = aot_tables.load(args.out)
        for _, marker, kind in aot_tables.TARGETS:
            print(f"<!-- {marker} -->\n{aot_tables.render(kind, results)}\n")


if __name__ == "__main__":
    main()
