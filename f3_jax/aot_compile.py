"""python -m f3_jax.aot_compile --config configs/X.py --topology v5e:16x16
       [--num_slices N] [--programs train,eval] [--json OUT] [--config.FIELD=VALUE ...]
       [--ae_config configs/ae_24k.py] [--repr_config configs/repr_24k.py]
       [--memory_only --programs train]

Compiles a stage's programs for a TPU slice on a machine without a TPU (libtpu's compile-only
devices: pip install -e ".[tpu]"): the train step, the eval step, for stage 1 the codec's
encode and decode, for stage 3 one generation step. No weights, data or earlier exports are
read: state and batch are shapes, and a missing export is stood in for by a stage config
(by default the same size's config next to --config). For each program it prints and
writes (--json) the compile time, per-device memory against the chip's HBM with a verdict,
FLOPs and bytes per device, the collectives by kind, and a roofline estimate of the step time
and MFU: an estimate from the compiler's counts, never a measurement. A program that does not
fit names its largest buffers. --memory_only stops once the buffers are assigned (the fit
verdict and memory in minutes; the code generation after it takes tens of minutes for
stage 1 on a small machine): what a search for the largest batch that fits needs.
"""

from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_flags

from f3_jax import cli
from f3_jax.aot.chips import GiB, check_topology
from f3_jax.errors import UsageError

_CONFIG = _TOPOLOGY = _SLICES = _PROGRAMS = _JSON = _AE = _REPR = _FAST = _MEMORY_ONLY = None


def define_flags() -> None:
    """The CLI's flags, defined only when run as a program (tests import the module)."""
    global _CONFIG, _TOPOLOGY, _SLICES, _PROGRAMS, _JSON, _AE, _REPR, _FAST, _MEMORY_ONLY
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config (configs/*.py).")
    _TOPOLOGY = flags.DEFINE_string(
        "topology", None, "TPU slice to compile for: v5e:16x16, v5p:4x4x8, v6e:8x8, v4:2x2x4 ..."
    )
    _SLICES = flags.DEFINE_integer(
        "num_slices", 1, "Slices joined by the data-center network; the data axis spans them."
    )
    _PROGRAMS = flags.DEFINE_list("programs", [], "Compile only these (default: all).")
    _JSON = flags.DEFINE_string("json", None, "Write the report here as JSON.")
    _AE = config_flags.DEFINE_config_file(
        "ae_config", None, "Stage-1 config standing in for a missing autoencoder export."
    )
    _REPR = config_flags.DEFINE_config_file(
        "repr_config", None, "Stage-2 config standing in for a missing representation export."
    )
    _FAST = flags.DEFINE_bool(
        "fast",
        False,
        "Compile with the least optimization effort (exec_time_optimization_effort=-1): "
        "faster, but memory and cost may differ from what training compiles.",
    )
    _MEMORY_ONLY = flags.DEFINE_bool(
        "memory_only",
        False,
        "Stop once the compiler has assigned the buffers (minutes, not the code generation's "
        "tens of minutes): the fit verdict and memory, no cost analysis. One program.",
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected argument {argv[1]!r} (flags only)")
    if _CONFIG.value is None:
        raise UsageError("--config is required (a configs/*.py file)")
    if not _TOPOLOGY.value:
        raise UsageError("--topology is required, e.g. --topology=v5e:16x16")
    check_topology(_TOPOLOGY.value)
    if _MEMORY_ONLY.value and len(_PROGRAMS.value) != 1:
        raise UsageError("--memory_only compiles one program: give --programs=NAME (e.g. train)")
    from f3_jax.aot import topology

    topology.use_cpu_runtime()  # before anything touches a JAX backend
    from f3_jax.aot.stage import compile_stage

    result = compile_stage(
        _CONFIG.value,
        _TOPOLOGY.value,
        num_slices=_SLICES.value,
        config_path=flags.FLAGS["config"].config_filename,
        given_stand_ins={"autoencoder": _AE.value, "representation": _REPR.value},
        only=tuple(_PROGRAMS.value),
        options=FAST_OPTIONS if _FAST.value else None,
        progress=lambda line: print(line, flush=True),
        on_assigned=_finish_early if _MEMORY_ONLY.value else None,
    )
    _finish(result)


def _finish(result: dict) -> None:
    print(render(result), flush=True)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=1)


def _finish_early(result: dict) -> None:
    """--memory_only: the report once the buffers are assigned, then the process ends (the
    compiler's code generation cannot be interrupted otherwise)."""
    _finish(result)
    os._exit(0)


FAST_OPTIONS = {"exec_time_optimization_effort": -1.0}


# ---- printing ------------------------------------------------------------------------------
def gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _options_line(options: dict | None) -> list[str]:
    if not options:
        return []
    given = ", ".join(f"{k}={v}" for k, v in options.items())
    return [f"compiler options {given}: memory and cost are this compile's, not training's"]


def render(result: dict) -> str:
    """The report as text: one table row per program, then collectives and buffers."""
    mesh = " ".join(f"{k}={v}" for k, v in result["mesh"].items())
    lines = [
        f"{result['config']} ({result['stage']}) on {result['topology']}"
        f"{' x ' + str(result['num_slices']) + ' slices' if result['num_slices'] > 1 else ''}: "
        f"{result['devices']} chips, mesh {mesh}, global batch {result['global_batch']}; "
        f"jax {result['jax']}, libtpu {result['libtpu']}",
        f"memory per chip in GiB; step time and MFU: {result['note']}",
        *_options_line(result.get("compiler_options")),
        "",
        "| program | compile s | args | outputs | temps | code | total / HBM | verdict "
        "| TFLOP/chip | GB/chip | est. step s | bound | est. MFU | largest collective |",
        "|" + "---|" * 14,
    ]
    for name, r in result["programs"].items():
        lines.append(_row(name, r))
    for name, r in result["programs"].items():
        lines += ["", f"{name}: {r['description']}"]
        if r["status"] == "error":
            lines.append(f"  compile error: {r['error']}")
            continue
        if r["status"] == "compiled":
            lines += _collective_lines(r)
        if r.get("largest_buffers"):
            lines.append("  largest buffers (per chip):")
            lines += [_buffer_line(b) for b in r["largest_buffers"]]
    return "\n".join(lines)


def _row(name: str, r: dict) -> str:
    seconds = f"{r.get('compile_seconds', 0):.0f}"
    if r["status"] == "error":
        return f"| {name} | {seconds} | compile error: {r['error'][:80]} |" + " |" * 11
    m = r["memory"]
    total = f"{gib(m['total'])} / {gib(m['hbm'])}"
    if r["status"] != "compiled":
        return f"| {name} | {seconds} | | | | | {total} | {r['verdict']} |" + " |" * 6
    e = r["estimate"]
    big = r["largest_collective"]
    collective = f"{big['kind']} {_size(big['bytes'])}" if big else "none"
    return (
        f"| {name} | {seconds} | {gib(m['arguments'])} | {gib(m['outputs'])} "
        f"| {gib(m['temporaries'])} | {gib(m['generated_code'])} | {total} | {r['verdict']} "
        f"| {r['flops_per_device'] / 1e12:.3f} | {r['bytes_accessed_per_device'] / 1e9:.2f} "
        f"| {e['step_seconds']:.4f} | {e['bound']} | {100 * e['mfu']:.0f} % | {collective} |"
    )


def _collective_lines(r: dict) -> list[str]:
    parts = [
        f"{kind} {row['count']} ({_size(row['bytes'])})"
        for kind, row in r["collectives"].items()
        if row["count"]
    ]
    flops = (
        f"  FLOPs per chip: {r['flops_xla']:.3e} (XLA cost analysis), "
        f"{r['flops_jaxpr']:.3e} (matmuls and convolutions of the jaxpr)"
        if r["flops_jaxpr"]
        else f"  FLOPs per chip: {r['flops_xla']:.3e} (XLA cost analysis)"
    )
    return [flops, "  collectives per step: " + (", ".join(parts) or "none")]


def _buffer_line(b: dict) -> str:
    where = f" ({b['source']})" if b["source"] else ""
    what = "argument" if b["parameter"] else "buffer"
    count = f"{b['count']} x " if b["count"] > 1 else ""
    return f"    {count}{_size(b['bytes'])} {b['shape']} {what} of {b['op_name']}{where}"


if __name__ == "__main__":
    define_flags()
    cli.run(main)
