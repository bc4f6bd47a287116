"""Before/after figures of each performance option: the train step of one config timed with
every variant of a group of overrides, each in a fresh process (benchmarks/train_step.py).

    python benchmarks/ablations.py --group ae_remat              # one group
    python benchmarks/ablations.py --group all --out /tmp/abl    # every group, JSON kept
    python benchmarks/ablations.py --group repr_remat --extra=--config.train.batch_size=16
    python benchmarks/ablations.py --group ae_remat --repeats 3 --out /tmp/abl   # min/median/max
    python benchmarks/ablations.py --from_json --out /tmp/abl --template T.md --write RESULTS.md

A group is a config and its variants; the first variant is the reference the others are
compared with. For each variant the table gives the steady step time, the compile time, XLA's
buffer assignment of the compiled step per device (temporaries: activations kept for the
backward pass and workspace; arguments: state, batch, frozen weights), FLOPs per step and the
achieved FLOP/s (MFU where the device has a peak in train_step.DEVICE_PEAKS). --extra adds
flags to every run of the group (a larger batch on an accelerator; the defaults below are
small enough for a 2-core CPU). On a CPU, compare memory figures, which do not depend on the
machine's load; step times move with it (and bf16 is emulated there, so it is slower than
float32: on a CPU only the memory of a bf16 variant means something). --repeats runs each
variant that many times in fresh processes, round robin; the table gives the step's min /
median / max over them and the load average the runs saw.

Every run of a group is kept in --out/NAME.json. --template fills the {table("NAME")}
placeholders of a Markdown file with the tables of its groups (measured now, or read back
with --from_json), each between markers that let a later rendering replace it: the rendered
file is its own template. A group without measurements, or with a failed variant, makes the
program exit non-zero and write nothing, and `render` raises rather than leave a placeholder
in the text. benchmarks/RESULTS.md's tables come from benchmarks/results/ablations/ this way
(tests/test_benchmarks.py checks that they still do):

    python benchmarks/ablations.py --from_json --out benchmarks/results/ablations \\
        --template benchmarks/RESULTS.md
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclass(frozen=True)
class Group:
    config: str
    base: tuple[str, ...]  # flags of every variant (batch size, crop, steps)
    variants: tuple[tuple[str, tuple[str, ...]], ...]  # (name, flags); the first is the reference
    what: str


_SMALL_AE = ("--config.train.batch_size=4", "--config.data.crop_seconds=0.4")
_SMALL_TEXT = (
    "--config.train.batch_size=2",
    "--config.data.eval_batch_size=2",
    "--config.data.crop_seconds=4.0",
)
_BF16_FROZEN = (
    "--config.llm.dtype=bfloat16",
    "--config.llm.param_dtype=bfloat16",
    "--config.autoencoder.dtype=bfloat16",
    "--config.autoencoder.param_dtype=bfloat16",
)

_AE_REMAT = tuple(
    (f"model.remat={p}", (f"--config.model.remat={p}",)) for p in ("none", "dots_saveable", "full")
)

GROUPS = {
    "ae_remat": Group(
        "configs/ae_demo.py",
        _SMALL_AE,
        _AE_REMAT,
        "stage 1: rematerialization of the encoder and decoder blocks",
    ),
    "ae_remat_generator": Group(
        "configs/ae_demo.py",
        ("--config.train.batch_size=2", "--config.data.crop_seconds=2.0", "--noadversarial"),
        _AE_REMAT,
        "stage 1, generator step alone on longer crops: rematerialization of the blocks",
    ),
    "ae_dtype": Group(
        "configs/ae_demo.py",
        _SMALL_AE,
        (
            ("compute float32", ("--config.compute_dtype=float32",)),
            ("compute bfloat16", ("--config.compute_dtype=bfloat16",)),
        ),
        "stage 1: bf16 compute, float32 parameters and optimizer state",
    ),
    "repr_remat": Group(
        "configs/repr_demo.py",
        _SMALL_TEXT,
        (
            ("remat none", ("--config.encoder.remat=none", "--config.llm.remat=none")),
            ("encoder dots_saveable", ("--config.encoder.remat=dots_saveable",)),
            ("encoder full", ("--config.encoder.remat=full",)),
            ("llm full", ("--config.llm.remat=full",)),
            ("encoder + llm full", ("--config.encoder.remat=full", "--config.llm.remat=full")),
        ),
        "stage 2: rematerialization of the encoder blocks and of the frozen LLM's layers "
        "(the gradient flows through the LLM to the adapter)",
    ),
    "repr_scan": Group(
        "configs/repr_demo.py",
        _SMALL_TEXT,
        (
            ("scan encoder + llm", ("--config.encoder.scan_layers=true",)),
            (
                "unrolled encoder + llm",
                ("--config.encoder.scan_layers=false", "--config.llm.scan_layers=false"),
            ),
        ),
        "stage 2: nn.scan over identical transformer layers (compile time, memory)",
    ),
    "repr_dtype": Group(
        "configs/repr_demo.py",
        _SMALL_TEXT,
        (
            ("all float32", ()),
            ("frozen LLM + AE bfloat16", _BF16_FROZEN),
            ("everything bfloat16", (*_BF16_FROZEN, "--config.compute_dtype=bfloat16")),
        ),
        "stage 2: frozen autoencoder and LLM in bf16 (weights and compute), then bf16 compute",
    ),
    "flow_frozen": Group(
        "configs/flow_demo.py",
        _SMALL_TEXT,
        (
            ("audio, frozen float32", ()),
            (
                "audio, frozen bfloat16",
                (
                    *_BF16_FROZEN,
                    "--config.representation.dtype=bfloat16",
                    "--config.representation.param_dtype=bfloat16",
                ),
            ),
            ("latent cache, frozen float32", ("--latents",)),
        ),
        "stage 3: frozen stages in bf16; cached latents instead of the frozen encoder",
    ),
    "flow_remat": Group(
        "configs/flow_demo.py",
        _SMALL_TEXT,
        (
            ("flow_head.remat=none", ("--config.flow_head.remat=none",)),
            ("flow_head.remat=full", ("--config.flow_head.remat=full",)),
        ),
        "stage 3: rematerialization of the flow head's blocks",
    ),
}


class MissingMeasurements(RuntimeError):
    """A table was asked for that no measurement can fill: the benchmark fails instead of
    leaving a placeholder where the figures should be."""


def run_variant(
    group: Group, flags_: tuple[str, ...], json_path: str, *, steps: int, extra=(), timeout_s=3600
) -> dict:
    """train_step.py for one variant in its own process; its figures, or {"error": ...}. The
    1-minute load average before and after goes with them: on a shared machine it says how far
    the step times can be trusted."""
    cmd = [
        sys.executable,
        os.path.join(HERE, "train_step.py"),
        f"--config={group.config}",
        f"--steps={steps}",
        f"--json={json_path}",
        *group.base,
        *extra,
        *flags_,
    ]
    print("$", shlex.join(cmd), flush=True)
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": [f"timed out after {timeout_s} s"]}
    if proc.returncode != 0 or not os.path.exists(json_path):
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    with open(json_path) as f:
        return json.load(f) | {"load": [load, os.getloadavg()[0]]}


def summarize(runs: list[dict]) -> dict:
    """One variant's figures over its runs (fresh processes): the median step and compile
    times, with the step's min and max; memory and FLOPs are those of the first run (the same
    compiled program every time). A failed run fails the variant: a median of the runs that
    happened to succeed would hide it."""
    failed = [r for r in runs if "error" in r]
    if not runs or failed:
        return failed[0] if failed else {"error": ["no runs"]}
    steps = [r["step_s"] for r in runs]
    step_s = float(statistics.median(steps))
    loads = [x for r in runs for x in r.get("load", ())]
    return runs[0] | {
        "step_s": step_s,
        "step_s_min": min(steps),
        "step_s_max": max(steps),
        "compile_s": float(statistics.median(r["compile_s"] for r in runs)),
        "achieved_gflops_per_device": runs[0]["flops_per_step"] / step_s / 1e9,
        "runs": len(runs),
        "load": [min(loads), max(loads)] if loads else None,
    }


def group_record(name: str, group: Group, extra=()) -> dict:
    """What identifies a group's measurements: figures measured with other flags are not its."""
    return {
        "group": name,
        "config": group.config,
        "base": list(group.base),
        "extra": list(extra),
        "variants": [{"name": v, "flags": list(fs)} for v, fs in group.variants],
    }


def measure_group(
    name: str, group: Group, out: str, *, steps: int, repeats: int = 1, extra=(), timeout_s=3600
) -> list[tuple[str, dict]]:
    """Runs every variant `repeats` times, round robin (a drift of the machine's load then
    touches every variant alike), keeps all runs in out/NAME.json, and returns each variant's
    summary."""
    runs: list[list[dict]] = [[] for _ in group.variants]
    for k in range(repeats):
        for i, (_, flags_) in enumerate(group.variants):
            path = os.path.join(out, f"{name}_{i}_{k}.json")
            kwargs = {"steps": steps, "extra": extra, "timeout_s": timeout_s}
            runs[i].append(run_variant(group, flags_, path, **kwargs))
    record = group_record(name, group, extra)
    for variant, variant_runs in zip(record["variants"], runs):
        variant["runs"] = variant_runs
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    return [(v, summarize(r)) for (v, _), r in zip(group.variants, runs)]


def load_group(name: str, group: Group, out: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """The summaries of out/NAME.json, written by measure_group for this very group, and the
    --extra flags of its runs."""
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        raise MissingMeasurements(f"group {name!r}: no measurements ({path} does not exist)")
    with open(path) as f:
        record = json.load(f)
    expected = group_record(name, group, record.get("extra", ()))
    measured = record | {
        "variants": [{k: v[k] for k in ("name", "flags")} for v in record["variants"]]
    }
    if measured != expected:
        raise MissingMeasurements(
            f"group {name!r}: {path} holds measurements of other variants or flags; run it again"
        )
    return [(v["name"], summarize(v["runs"])) for v in record["variants"]], record["extra"]


def _ratio(value: float, ref: float) -> str:
    return f" ({value / ref:.2f}x)" if ref else ""


def _step(f: dict, ref: dict) -> str:
    """The median step time (min / median / max over several runs) and its ratio."""
    ratio = _ratio(f["step_s"], ref.get("step_s"))
    if f.get("runs", 1) > 1:
        return f"{f['step_s_min']:.2f} / **{f['step_s']:.2f}** / {f['step_s_max']:.2f}{ratio}"
    return f"{f['step_s']:.2f}{ratio}"


def table(group: Group, results: list[tuple[str, dict]], extra=()) -> str:
    """The group's Markdown table (a caption line with the flags of every run, then the rows);
    a failed variant is a row that says so."""
    runs = max((f.get("runs", 1) for _, f in results if "error" not in f), default=1)
    step = "step (s), min / median / max" if runs > 1 else "step (s)"
    head = (
        f"| variant | {step} | compile (s) | temporaries (GiB) | arguments (GiB) "
        "| GFLOP/step | GFLOP/s | MFU |\n|---|---|---|---|---|---|---|---|"
    )
    rows, ref = [head], results[0][1]
    r = ref if "error" not in ref else {}
    for name, f in results:
        if "error" in f:
            rows.append(f"| {name} | failed: {' '.join(f['error'])} | | | | | | |")
            continue
        mfu = f"{100 * f['mfu']:.1f} %" if f.get("mfu") is not None else "n/a"
        rows.append(
            f"| {name} | {_step(f, r)} "
            f"| {f['compile_s']:.0f} | {f.get('temp_gib', float('nan')):.3f}"
            f"{_ratio(f.get('temp_gib', 0), r.get('temp_gib'))} "
            f"| {f.get('argument_gib', float('nan')):.3f} | {f['flops_per_step'] / 1e9:.1f} "
            f"| {f['achieved_gflops_per_device']:.1f} | {mfu} |"
        )
    first = next((f for _, f in results if "error" not in f), {})
    where = f"{first.get('devices', '?')} x {first.get('device_kind', '?')}"
    if "timed_steps" in first:
        where += f"; {runs} run(s) of {first['timed_steps']} timed steps per variant"
    loads = [x for _, f in results if "error" not in f for x in (f.get("load") or ())]
    if loads:
        where += f"; load {min(loads):.1f}-{max(loads):.1f}"
    runs_flags = " ".join((*group.base, *extra))
    return f"{group.what} ({group.config}, {runs_flags}; {where})\n\n" + "\n".join(rows)


# A table's place in a Markdown file: a {table("NAME")} placeholder, or a table rendered
# before, between the markers `block` writes, which a new rendering replaces (so the file is
# its own template and rendering it again from the same measurements changes nothing).
# TEMPLATE_CALL is any template call at all, what the repository's pre-stop check and
# tests/test_benchmarks.py grep Markdown for: nothing of that shape may survive a rendering.
PLACEHOLDER = re.compile(r'\{table\("([^"]*)"\)\}')
_START = "<!-- ablations table {}: rendered by benchmarks/ablations.py, do not edit -->"
_END = "<!-- end of ablations table {} -->"
BLOCK_START = re.compile(r"<!-- ablations table (\w+):")
SLOT = re.compile(
    PLACEHOLDER.pattern
    + r"|<!-- ablations table (\w+):[^\n]*\n.*?\n<!-- end of ablations table \2 -->",
    re.S,
)
TEMPLATE_CALL = re.compile(r"\{[a-z_]+\(")


def block(name: str, table_text: str) -> str:
    """A rendered table between the markers that let it be rendered again."""
    return f"{_START.format(name)}\n\n{table_text}\n\n{_END.format(name)}"


def _name(slot: re.Match) -> str:
    return slot.group(1) if slot.group(1) is not None else slot.group(2)


def placeholders(template: str) -> list[str]:
    """The groups a template asks for (placeholders and tables rendered before), in order,
    each once."""
    return list(dict.fromkeys(_name(m) for m in SLOT.finditer(template)))


def render(template: str, tables: dict[str, str]) -> str:
    """`template` with each {table("NAME")} placeholder, and each table rendered before, replaced
    by tables[NAME] between its markers. Raises MissingMeasurements naming the group when a
    table is missing, and ValueError when a start marker has no end or any other template text
    is left, rather than return a placeholder where figures belong."""
    if len(BLOCK_START.findall(template)) != sum(bool(m.group(2)) for m in SLOT.finditer(template)):
        raise ValueError(f"a {_START.format('NAME')} line without its end marker")

    def table_of(match: re.Match) -> str:
        name = _name(match)
        if name not in tables:
            known = "" if name in GROUPS else " (not a group of benchmarks/ablations.py)"
            raise MissingMeasurements(f"{match.group(0)[:60]}: no table of group {name!r}{known}")
        return block(name, tables[name])

    rest = SLOT.sub(lambda m: "\n" * m.group(0).count("\n"), template)  # the same lines
    left = TEMPLATE_CALL.search(rest)
    if left:
        line = rest.count("\n", 0, left.start()) + 1
        raise ValueError(f"unrendered template text on line {line}: {rest.splitlines()[line - 1]}")
    return SLOT.sub(table_of, template)


def group_tables(names, out: str, *, from_json: bool, **measure) -> tuple[dict, list[str]]:
    """({name: table} of the groups measured now (measure_group's keyword arguments), or read
    back from out/NAME.json with from_json, and what failed: a group without measurements or
    with a failed variant has no table, only a line in the second."""
    tables, failed = {}, []
    for name in names:
        group = GROUPS[name]
        try:
            if from_json:
                results, extra = load_group(name, group, out)
            else:
                extra = measure.get("extra", ())
                results = measure_group(name, group, out, **measure)
        except MissingMeasurements as e:
            failed.append(str(e))
            continue
        text = table(group, results, extra)
        print(f"\n### {name}\n\n{text}\n", flush=True)
        broken = [v for v, f in results if "error" in f]
        if broken:  # a table with a failed row is not a result to publish
            failed.append(f"group {name!r}: no measurement of {', '.join(broken)}")
        else:
            tables[name] = text
    return tables, failed


def define_flags() -> None:
    """Only when run as a program (train_step.py defines --steps too)."""
    flags.DEFINE_list(
        "group",
        None,
        f"Groups, comma-separated: {', '.join(GROUPS)}, or all (default: "
        "the groups --template asks for).",
    )
    flags.DEFINE_integer("steps", 2, "Timed steps per variant after the compiling one.")
    flags.DEFINE_integer("repeats", 1, "Runs (fresh processes) per variant: min/median/max.")
    flags.DEFINE_multi_string("extra", [], "More train_step.py flags for every variant.")
    flags.DEFINE_string("out", None, "Directory of the runs' JSON (default: temp).")
    flags.DEFINE_integer("timeout_s", 3600, "Seconds allowed per variant.")
    flags.DEFINE_bool(
        "from_json",
        False,
        "Run nothing: tables of the groups' NAME.json in --out, from earlier runs.",
    )
    flags.DEFINE_string(
        "template", None, 'Markdown file whose {table("NAME")} placeholders get the tables.'
    )
    flags.DEFINE_string("write", None, "Where the rendered --template goes (default: in place).")


def main(argv) -> None:
    del argv
    fv = flags.FLAGS
    template = None
    if fv.template:
        with open(fv.template) as f:
            template = f.read()
    names = fv.group or (placeholders(template) if template else [])
    if names == ["all"]:
        names = list(GROUPS)
    if not names or any(n not in GROUPS for n in names):
        sys.exit(f"--group: some of {', '.join(GROUPS)}, or all; not {names}")
    if fv.from_json and not fv.out:
        sys.exit("--from_json reads the JSON of earlier runs in --out: give --out")
    out = fv.out or tempfile.mkdtemp(prefix="f3_ablations_")
    if not fv.from_json:
        os.makedirs(out, exist_ok=True)
    measure = {"steps": fv.steps, "repeats": fv.repeats, "extra": fv.extra}
    tables, failed = group_tables(
        names, out, from_json=fv.from_json, timeout_s=fv.timeout_s, **measure
    )
    if failed:
        sys.exit("ablations failed:\n" + "\n".join(failed))
    if template is not None:
        rendered = render(template, tables)
        with open(fv.write or fv.template, "w") as f:
            f.write(rendered)
        print(f"wrote {fv.write or fv.template}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
