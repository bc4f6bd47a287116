"""Where a train step's time goes: a `jax.profiler` trace of a few steps, summarized by op.

    python benchmarks/profile_step.py --config configs/ae_demo.py --steps 2
    python benchmarks/profile_step.py --config configs/repr_demo.py --out /tmp/prof_repr --top 30

Same setup and flags as benchmarks/train_step.py (synthetic batch through host_batch,
random-weight frozen stages). After one compiling step it traces --steps steps under
`jax.profiler.trace(OUT/trace, create_perfetto_trace=True)` (open OUT/trace in TensorBoard's
profile plugin or XProf, or perfetto_trace.json.gz in ui.perfetto.dev) and has XLA dump the
optimized HLO of every compiled program to OUT/hlo. The summary joins the two: every event of
the trace that names an HLO op (args hlo_module, hlo_op) gets its self time, and the op's
opcode and `metadata.op_name` from the dump give
  - phase: forward (under jvp), backward (transpose of jvp), other (optimizer update, frozen
    modules and losses outside the gradient, data movement);
  - scope: the first named scope of op_name below the jitted function (Flax module paths);
  - kind: convolution, dot, fusion (with what it fuses), copy, reduce, ...
and the top ops by self time.

What the figures are: on CPU several threads run ops at once, so op times add up to more
than the wall time; read them as shares of the op time, next to the wall time per step. Time
outside any op (Python dispatch, host work of `train_step`, waiting) is wall minus the op
time of the main executor thread only when ops do not overlap; the report prints both sums.
On GPUs the op events are kernel executions on the device timeline.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import time

import jax

try:  # run as a script: benchmarks/ is on sys.path
    import train_step
except ImportError:  # imported as benchmarks.profile_step
    from benchmarks import train_step


def dump_flags(hlo_dir: str) -> str:
    """XLA_FLAGS that dump each compiled program's optimized HLO as text to hlo_dir."""
    return f"--xla_dump_to={hlo_dir} --xla_dump_hlo_as_text"


def set_dump_flags(hlo_dir: str) -> None:
    """Must run before the first use of a device (XLA reads the flags when it starts)."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + dump_flags(hlo_dir)).strip()


# ---- the optimized HLO ----------------------------------------------------------------
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_KIND = re.compile(r"kind=(k\w+)")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_HEAVY = ("convolution", "dot", "custom-call", "fft", "reduce-window", "scatter", "gather")


def parse_hlo(text: str) -> dict:
    """{instruction: {opcode, kind, op_name, calls}} and {computation: opcodes inside}.

    A fusion that XLA made without metadata (e.g. CPU convolution fusions) takes the op_name
    of the heaviest instruction it fuses."""
    ops, comps, current = {}, collections.defaultdict(set), None
    names = collections.defaultdict(dict)  # computation -> {opcode: first op_name}
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(1)
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, _, opcode, rest = m.groups()
        comps[current].add(opcode)
        op_name = _OP_NAME.search(rest)
        if op_name:
            names[current].setdefault(opcode, op_name.group(1))
        kind, calls = _KIND.search(rest), _CALLS.search(rest)
        ops[name] = {
            "opcode": opcode,
            "kind": kind.group(1) if kind else "",
            "op_name": op_name.group(1) if op_name else "",
            "calls": calls.group(1) if calls else "",
        }
    for info in ops.values():
        inside = names.get(info["calls"], {})
        if not info["op_name"] and inside:
            heavy = [inside[h] for h in _HEAVY if h in inside]
            info["op_name"] = heavy[0] if heavy else next(iter(inside.values()))
    return {"ops": ops, "computations": comps}


def read_dumps(hlo_dir: str) -> dict:
    """{module name: parsed optimized HLO}; the latest dump of a name wins."""
    modules = {}
    for path in sorted(glob.glob(os.path.join(hlo_dir, "*after_optimizations.txt"))):
        base = os.path.basename(path)
        m = re.match(r"module_\d+\.(.+?)\.[a-z]+_after_optimizations\.txt$", base)
        if m:
            with open(path) as f:
                modules[m.group(1)] = parse_hlo(f.read())
    return modules


def op_kind(info: dict, computations: dict) -> str:
    """A short kind: the opcode, or for a fusion what heavy op it fuses (conv, dot, ...)."""
    if info["opcode"] != "fusion":
        return info["opcode"]
    inside = computations.get(info["calls"], set())
    heavy = [h for h in _HEAVY if h in inside]
    return f"fusion({heavy[0]})" if heavy else f"fusion({info['kind'][1:].lower() or '?'})"


def phase_of(op_name: str) -> str:
    if "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "other"


def scope_of(op_name: str, depth: int = 2) -> str:
    """The first `depth` named scopes (Flax modules) between the jitted function and the
    primitive, without the jvp()/transpose() wrappers."""
    parts = op_name.split("/")[1:-1]  # drop jit(f) and the primitive's own name
    parts = [re.sub(r"^((transpose|jvp|checkpoint|remat)\()+|\)+$", "", p) for p in parts]
    names = [re.sub(r"_\d+$", "_*", p) for p in parts if p and "(" not in p]  # layers_3
    return "/".join(names[:depth]) or "(no scope)"


# ---- the trace ------------------------------------------------------------------------
def trace_file(trace_dir: str) -> str:
    paths = sorted(
        glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    )
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    return paths[-1]


def op_events(path: str) -> list[dict]:
    """Complete events of HLO ops with their self time (minus nested op events), in us."""
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    ops = [
        e
        for e in events
        if e.get("ph") == "X" and "hlo_op" in (e.get("args") or {}) and e.get("dur", 0) > 0
    ]
    by_thread = collections.defaultdict(list)
    for e in ops:
        by_thread[(e["pid"], e["tid"])].append(e)
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in thread:
            e["self"] = e["dur"]
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                stack[-1]["self"] -= e["dur"]
            stack.append(e)
    return ops


def summarize(events: list[dict], modules: dict, steps: int, wall_s: float, top: int) -> dict:
    """Per-step self times (ms) grouped by phase, scope, kind, module and op."""
    groups = {k: collections.Counter() for k in ("phase", "scope", "kind", "module", "op")}
    meta = {}
    for e in events:
        module, op = e["args"].get("hlo_module", "?"), e["args"]["hlo_op"]
        parsed = modules.get(module, {"ops": {}, "computations": {}})
        info = parsed["ops"].get(op, {"opcode": "?", "kind": "", "op_name": "", "calls": ""})
        ms = e["self"] / 1e3 / steps
        key = f"{module}:{op}"
        groups["phase"][phase_of(info["op_name"])] += ms
        groups["scope"][scope_of(info["op_name"])] += ms
        groups["kind"][op_kind(info, parsed["computations"])] += ms
        groups["module"][module] += ms
        groups["op"][key] += ms
        meta[key] = {"kind": op_kind(info, parsed["computations"]), "op_name": info["op_name"]}
    total = sum(groups["module"].values())
    out = {"steps": steps, "wall_ms_per_step": 1e3 * wall_s / steps, "op_ms_per_step": total}
    for name, counter in groups.items():
        limit = top if name in ("op", "scope") else None
        out[name] = [
            {"name": k, "ms": v, "share": v / total if total else 0.0} | meta.get(k, {})
            for k, v in counter.most_common(limit)
        ]
    return out


def report(s: dict) -> str:
    lines = [
        f"traced steps        {s['steps']}",
        f"wall per step       {s['wall_ms_per_step']:.1f} ms",
        f"op time per step    {s['op_ms_per_step']:.1f} ms (self time of HLO ops, summed over "
        "threads)",
    ]
    for name, title in (
        ("module", "by compiled program"),
        ("phase", "by phase"),
        ("kind", "by op kind"),
        ("scope", "by named scope (top)"),
    ):
        lines.append(f"\n{title}:")
        lines += [f"  {r['ms']:10.1f} ms {100 * r['share']:5.1f} %  {r['name']}" for r in s[name]]
    lines.append("\ntop ops by self time:")
    for r in s["op"]:
        lines.append(
            f"  {r['ms']:10.1f} ms {100 * r['share']:5.1f} %  {r['name']:<40} {r['kind']:<22} "
            f"{r['op_name'][:90]}"
        )
    return "\n".join(lines)


# ---- running --------------------------------------------------------------------------
def profile(config, mesh, steps: int, out: str, adversarial=True, latents=False) -> tuple:
    """Compiles, then traces `steps` steps to out/trace; returns (wall seconds, trace dir)."""
    trainer, state, batch, _ = train_step.setup(config, mesh, latents)
    step0 = train_step.first_step(config, adversarial)
    state, _, _ = train_step.time_steps(trainer, state, batch, step0, 0)  # compiles
    trace_dir = os.path.join(out, "trace")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        t = time.perf_counter()
        state, _, times = train_step.time_steps(trainer, state, batch, step0 + 1, steps - 1)
        wall = time.perf_counter() - t
    return wall, trace_dir


def run(config, steps: int, out: str, top=25, adversarial=True, latents=False, **frozen) -> dict:
    """Profile and summary. XLA_FLAGS must hold dump_flags(out/hlo) before jax starts."""
    with train_step.prepared(config, **frozen) as (config, mesh):
        wall, trace_dir = profile(config, mesh, steps, out, adversarial, latents)
    events = op_events(trace_file(trace_dir))
    summary = summarize(events, read_dumps(os.path.join(out, "hlo")), steps, wall, top)
    return summary | {"stage": config.stage, "trace_dir": trace_dir}


def define_flags():
    from absl import flags

    fv = train_step.define_flags()
    flags.DEFINE_string("out", None, "Output directory (default /tmp/f3_profile_<config name>).")
    flags.DEFINE_integer("top", 25, "Ops and scopes listed.")
    fv.set_default("steps", 2)
    return fv


def main(argv) -> None:
    del argv
    from absl import flags

    fv = flags.FLAGS
    out = fv.out or f"/tmp/f3_profile_{os.path.basename(fv['config'].config_filename)[:-3]}"
    os.makedirs(out, exist_ok=True)
    set_dump_flags(os.path.join(out, "hlo"))
    train_step.use_compilation_cache(fv.compilation_cache)
    s = run(
        fv.config,
        fv.steps,
        out,
        fv.top,
        adversarial=fv.adversarial,
        latents=fv.latents,
        **train_step.frozen_kwargs(fv),
    )
    print(report(s))
    print(f"\ntrace: {s['trace_dir']}")
    if fv.json:
        train_step.write_json(fv.json, s)
        print(f"wrote {fv.json}")
    if not s["op_ms_per_step"] > 0:
        sys.exit("no HLO op events in the trace")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
