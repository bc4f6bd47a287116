"""The tables of README's "What fits where" and RESULTS.md, rendered from the sweep's reports.

    python benchmarks/aot_sweep.py table            # print them
    python benchmarks/aot_sweep.py table --write    # rewrite them between their markers

Each report is one `python -m f3_jax.aot_compile --json` file of `benchmarks/reports/aot/`
(`aot_sweep.py run` and `largest` write them). Three renders:

- the summary (README, `WHAT_FITS_SUMMARY`): one row per config, one column per topology,
  the as-configured compile, its variants, the largest per-chip batch that fits and on which
  chip families the train step was compiled to the end;
- the finished compiles (README, `WHAT_FITS_TABLE`): one row per program that went through
  the whole TPU compiler or was rejected by it, with its roofline estimate;
- every report (RESULTS.md, `AOT_TABLE`), the buffer-assignment trials included.

`tests/test_aot_hlo.py` checks that the committed README and RESULTS.md hold what the
committed reports render to, so a report added without `--write` fails the default run.
"""

from __future__ import annotations

import glob
import json
import os
import re

GiB = 2**30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTS = os.path.join(ROOT, "benchmarks", "reports", "aot")
# (file under ROOT, marker, render): what `--write` replaces.
TARGETS = (
    ("README.md", "WHAT_FITS_SUMMARY", "summary"),
    ("README.md", "WHAT_FITS_TABLE", "compiled"),
    ("benchmarks/RESULTS.md", "AOT_TABLE", "all"),
)
_TRIAL = re.compile(r"b(\d+)pc$")  # `aot_sweep.py largest` trials: b<per-chip batch>pc


def load(reports: str = REPORTS) -> list[dict]:
    """Every report of the folder."""
    results = []
    for path in sorted(glob.glob(os.path.join(reports, "*.json"))):
        with open(path) as f:
            results.append(json.load(f))
    return results


def chips(topology: str) -> int:
    count = 1
    for n in topology.split(":")[1].split("x"):
        count *= int(n)
    return count


def per_chip(result: dict) -> int:
    return result["global_batch"] // (chips(result["topology"]) * result.get("num_slices", 1))


def _overrides(result: dict) -> list[str]:
    return result.get("variant", {}).get("overrides", [])


def variant(result: dict) -> str:
    """The config overrides of a report, in words; "as configured" when there are none."""
    # The batch has a column of its own; --memory_only shows in the verdict.
    names = [o.removeprefix("--") for o in _overrides(result) if o != "--memory_only"]
    names = [n.removeprefix("config.") for n in names if not n.startswith("config.train.batch")]
    names = ["data.latent_cache (set)" if n.startswith("data.latent_cache=") else n for n in names]
    names = ["least compile effort (--fast)" if n == "fast" else n for n in names]
    return " ".join(names) or "as configured"


def _is_least_effort(result: dict) -> bool:
    return "--fast" in _overrides(result)


def _is_trial(result: dict) -> bool:
    return bool(_TRIAL.match(result.get("variant", {}).get("tag", "")))


def _is_historic(result: dict) -> bool:
    """Reports of code since changed, kept for the before/after: "(before ...)" overrides."""
    return any(o.startswith("(") for o in _overrides(result))


def _is_memory_only(result: dict) -> bool:
    return "--memory_only" in _overrides(result)


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def row(result: dict, name: str, program: dict) -> str:
    """One program of one report as a row of the full tables."""
    mesh = "x".join(str(v) for v in result["mesh"].values())
    slices = f" x {result['num_slices']}" if result.get("num_slices", 1) > 1 else ""
    head = (
        f"| {os.path.basename(result['config'])} | {variant(result)} "
        f"| {result['topology']}{slices} | {mesh} | {result['global_batch']} | {name} "
        f"| {program.get('compile_seconds', 0):.0f} "
    )
    if program["status"] == "error":
        return head + f"| error: {program['error'][:60]} | | | | |"
    m = program["memory"]
    memory = f"{m['total'] / GiB:.2f} / {m['hbm'] / GiB:.0f}"
    if program["status"] != "compiled":
        big = (program.get("largest_buffers") or [{}])[0]
        where = f"largest buffer: {_size(big['bytes'])} {big['shape']}" if big else ""
        return head + f"| {memory} | {program['verdict']} | | | {where} |"
    e, big = program["estimate"], program["largest_collective"]
    collective = f"{big['kind']} {_size(big['bytes'])}" if big else "none"
    return head + (
        f"| {memory} | {program['verdict']} | {e['step_seconds']:.3f} ({e['bound']}) "
        f"| {100 * e['mfu']:.0f} % | {collective} |"
    )


_HEADER = (
    "| config | variant | topology | mesh (data x fsdp x tensor) | global batch | program "
    "| compile s | GiB per chip / HBM | verdict | est. step s (bound) "
    "| est. MFU (upper bound) | largest single collective |\n" + "|" + "---|" * 12
)


def _order(result: dict) -> tuple:
    return (
        result["config"], chips(result["topology"]), result["topology"],
        result.get("num_slices", 1), _is_historic(result), _is_trial(result),
        variant(result), result["global_batch"],
    )  # fmt: skip


def full_table(results: list[dict], finished_only: bool) -> str:
    """Every program of every report; with finished_only, only the compiler's own verdicts
    (compiled to the end, or rejected), not the buffer-assignment trials."""
    lines = [_HEADER]
    for result in sorted(results, key=_order):
        if finished_only and (_is_memory_only(result) or _is_historic(result)):
            continue
        lines += [row(result, n, p) for n, p in result["programs"].items()]
    return "\n".join(lines)


def _outcome(result: dict) -> str:
    """ "compiled 5.37 / 16 GiB (2681 s)", "does not fit (24.2 GiB)", "fits (3.9 GiB est.)"."""
    train = result["programs"]["train"]
    total = train["memory"]["total"] / GiB if "memory" in train else None
    if train["status"] == "compiled":
        hbm = train["memory"]["hbm"] / GiB
        return f"**compiled**, {total:.2f} / {hbm:.0f} GiB ({train['compile_seconds']:.0f} s)"
    if train["status"] == "error":
        return "error"
    # "assigned": fits by the buffer assignment (x 1.25), not a finished compile's figure.
    estimated = " est." if train["status"] == "assigned" else ""
    fits = train["verdict"].startswith("fits")
    return f"{'fits' if fits else 'does not fit'} ({total:.1f} GiB{estimated})"


def largest_fitting(results: list[dict]) -> int | None:
    """The largest per-chip batch that fits: of the `largest` trials (buffer assignment x 1.25)
    and of the finished compiles as configured, which overrule the trials' margin."""
    fitting = [
        per_chip(r) for r in results
        if (_is_trial(r) or (r["programs"]["train"]["status"] == "compiled" and _is_plain(r)))
        and r["programs"]["train"]["verdict"].startswith("fits")
    ]  # fmt: skip
    return max(fitting) if fitting else None


def _is_plain(result: dict) -> bool:
    return variant(result) == "as configured" and result.get("num_slices", 1) == 1


def _best(results: list[dict]) -> dict | None:
    """A finished compile over a buffer-assignment verdict for the same variant."""
    return max(results, key=lambda r: not _is_memory_only(r), default=None)


def summary_cell(results: list[dict], batch: int) -> str:
    """What the reports of one config on one topology say, in a few words; batch is the
    config's global batch (a `largest` trial at that batch stands for the config as is)."""
    current = [
        r for r in results
        if not _is_historic(r) and (not _is_trial(r) or r["global_batch"] == batch)
    ]  # fmt: skip
    parts = []
    for name in sorted({variant(r) for r in current}, key=lambda v: v != "as configured"):
        chosen = _best([r for r in current if variant(r) == name])
        prefix = "" if name == "as configured" else f"with {name}: "
        parts.append(f"{prefix}{_outcome(chosen)} at {per_chip(chosen)} per chip")
    if any(_is_trial(r) for r in results):
        most = largest_fitting(results)
        parts.append(f"largest {most} per chip" if most else "not even 1 per chip fits")
    return "; ".join(parts) or "-"


def _family(topology: str) -> str:
    return topology.split(":")[0]


def summary(results: list[dict]) -> str:
    """Configs by topologies (one slice), and the chip families each compiled to the end on."""
    # The other programs' reports (eval, codec, generation) are rows of the full tables only.
    single = [r for r in results if r.get("num_slices", 1) == 1 and "train" in r["programs"]]
    topologies = sorted({r["topology"] for r in single}, key=lambda t: (_family(t), chips(t)))
    lines = [
        "| config (global batch) | "
        + " | ".join(f"{t} ({chips(t)} chips)" for t in topologies)
        + " | train step compiled for |",
        "|" + "---|" * (len(topologies) + 2),
    ]
    for config in sorted({r["config"] for r in single}):
        mine = [r for r in single if r["config"] == config]
        batch = min(r["global_batch"] for r in mine if not _is_trial(r))
        cells = [summary_cell([r for r in mine if r["topology"] == t], batch) for t in topologies]
        name = os.path.basename(config).removesuffix(".py")
        lines.append(f"| `{name}` ({batch}) | " + " | ".join(cells) + f" | {_compiled_for(mine)} |")
    return "\n".join(lines)


def _compiled_for(results: list[dict]) -> str:
    """The chip families a train step compiled to the end for; "(--fast)" where only at the
    least compile effort, whose memory and cost may differ from training's compile."""
    compiled = [r for r in results if r["programs"]["train"]["status"] == "compiled"]
    families = sorted({_family(r["topology"]) for r in compiled})
    full = {_family(r["topology"]) for r in compiled if not _is_least_effort(r)}
    return ", ".join(f if f in full else f"{f} (--fast)" for f in families)


def render(kind: str, results: list[dict]) -> str:
    if kind == "summary":
        return summary(results)
    return full_table(results, finished_only=kind == "compiled")


def replace_between(text: str, marker: str, body: str) -> str:
    """text with what lies between <!-- MARKER --> and <!-- /MARKER --> replaced by body."""
    pattern = re.compile(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {marker} --> ... <!-- /{marker} --> block")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text, count=1)


def write(root: str = ROOT, reports: str = REPORTS) -> list[str]:
    """Rewrites every target's block from the reports; returns the files it changed."""
    results, changed = load(reports), []
    for name in dict.fromkeys(path for path, _, _ in TARGETS):
        path = os.path.join(root, name)
        with open(path) as f:
            before = f.read()
        after = before
        for _, marker, kind in (t for t in TARGETS if t[0] == name):
            after = replace_between(after, marker, render(kind, results))
        if after != before:
            with open(path, "w") as f:
                f.write(after)
            changed.append(name)
    return changed
