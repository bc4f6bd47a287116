"""Compile one program for the TPU and report what the compiler says about it.

Per program: compile time; per-device memory from `memory_analysis()` (arguments, outputs,
temporaries, generated code) against the chip's HBM, with a verdict; FLOPs and bytes from
`cost_analysis()`; the collectives of the optimized HLO by kind; a roofline estimate of the
step time and the MFU it implies. Every time and MFU here is an estimate from the compiler's
counts and the chip's published peaks, never a measurement.

A program that does not fit fails to compile (RESOURCE_EXHAUSTED): the compiler's message
gives the memory it needed, and its buffer-assignment dump (compiled with `xla_dump_to`) the
largest buffers, named by the JAX operations that made them.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from f3_jax.aot import hlo
from f3_jax.aot.chips import Chip, GiB
from f3_jax.aot.early_verdict import EarlyVerdict
from f3_jax.aot.programs import Program

TOP_BUFFERS = 5
ESTIMATE = "compiler estimate (roofline from cost_analysis and published chip peaks), not measured"


@dataclasses.dataclass
class Memory:
    """Per-device bytes of one compiled program."""

    arguments: int
    outputs: int  # not aliased to donated arguments
    temporaries: int
    generated_code: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs + self.temporaries + self.generated_code


def memory_of(stats) -> Memory:
    """From a `CompiledMemoryStats`; a donated argument's aliased output is counted once."""
    return Memory(
        arguments=int(stats.argument_size_in_bytes),
        outputs=int(stats.output_size_in_bytes - stats.alias_size_in_bytes),
        temporaries=int(stats.temp_size_in_bytes),
        generated_code=int(stats.generated_code_size_in_bytes),
    )


def verdict(required: int, capacity: int) -> str:
    if required <= capacity:
        return "fits"
    return f"does not fit by {(required - capacity) / GiB:.2f} GiB"


def roofline(flops: float, bytes_accessed: float, chip: Chip) -> dict:
    """Step time bound: the larger of compute time at bf16 peak and HBM traffic time."""
    compute = flops / chip.peak_bf16_flops
    memory = bytes_accessed / chip.hbm_bytes_per_s
    seconds = max(compute, memory)
    return {
        "step_seconds": seconds,
        "bound": "compute" if compute >= memory else "memory",
        "compute_seconds": compute,
        "memory_seconds": memory,
        "mfu": compute / seconds if seconds > 0 else 0.0,
        "note": ESTIMATE,
    }


_NEEDED = [
    # "... required for HLO temporaries (19.38G) exceeds available HBM (15.75G)."
    re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"),
    # "Used 20.5G of 15.75G hbm. Exceeded hbm capacity by 4.75G."
    re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
]
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def out_of_memory(message: str) -> tuple[int, int] | None:
    """(bytes needed, bytes available) from the TPU compiler's out-of-memory message."""
    for pattern in _NEEDED:
        m = pattern.search(message)
        if m:
            need = float(m.group(1)) * _UNIT[m.group(2)]
            have = float(m.group(3)) * _UNIT[m.group(4)]
            return int(need), int(have)
    return None


def compile_program(
    program: Program,
    chip: Chip,
    options: dict | None = None,
    on_assigned: Callable[[dict], None] | None = None,
) -> tuple[dict, Any]:
    """Lowers and compiles `program`: its report as a JSON-ready dict (status "compiled",
    "does not fit" or "error"), and the compiled executable (None when it failed).

    on_assigned: called from a thread with a report of status "assigned" (EarlyVerdict) once
    the buffers are assigned, while the code is still being generated."""
    dump = tempfile.mkdtemp(prefix="f3_aot_")
    try:
        return _compile(program, chip, dict(options or {}), dump, on_assigned)
    finally:
        shutil.rmtree(dump, ignore_errors=True)


def _compile(
    program: Program, chip: Chip, options: dict, dump: str, on_assigned=None
) -> tuple[dict, Any]:
    report = {"program": program.name, "description": program.description}
    start = time.perf_counter()
    lowered = program.lower()
    report["lower_seconds"] = time.perf_counter() - start
    options |= {"xla_dump_to": dump}
    watcher = on_assigned and EarlyVerdict(dump, chip, on_assigned, report)
    start = time.perf_counter()
    try:
        compiled = lowered.compile(compiler_options=options)
    except Exception as e:  # noqa: BLE001  the compiler's own errors are the result here
        report["compile_seconds"] = time.perf_counter() - start
        return report | _failure(str(e), chip, dump), None
    finally:
        if watcher:
            watcher.finished()
    report["compile_seconds"] = time.perf_counter() - start
    report |= _analysis(compiled, program, chip)
    report["largest_buffers"] = _buffers(dump)
    return report, compiled


def _failure(message: str, chip: Chip, dump: str) -> dict:
    first = message.strip().splitlines()[0] if message.strip() else "(no message)"
    needed = out_of_memory(message) if "RESOURCE_EXHAUSTED" in message else None
    if needed is None:
        return {"status": "error", "error": first}
    need, have = needed
    return {
        "status": "does not fit",
        "error": first,
        "memory": {"total": need, "hbm": chip.hbm_bytes, "compiler_available": have},
        "verdict": f"does not fit by {(need - have) / GiB:.2f} GiB",
        "largest_buffers": _buffers(dump),
    }


def _buffers(dump: str) -> list[dict]:
    return [dataclasses.asdict(b) for b in hlo.largest_buffers(dump, TOP_BUFFERS)]


def _analysis(compiled, program: Program, chip: Chip) -> dict:
    memory = memory_of(compiled.memory_analysis())
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops_xla = float(cost.get("flops", 0.0))
    bytes_accessed = float(cost.get("bytes accessed", 0.0))
    flops_jaxpr = program.model_flops() if program.model_flops else 0.0
    # XLA counts a loop body once (scanned layers), the jaxpr count counts every iteration
    # but no elementwise work: the larger is the better lower bound of the work done.
    flops = max(flops_xla, flops_jaxpr)
    found = hlo.collectives(compiled.as_text())
    largest = max(found, key=lambda c: c.bytes, default=None)
    estimate = roofline(flops, bytes_accessed, chip)
    if program.audio_seconds and estimate["step_seconds"] > 0:
        estimate["audio_seconds_per_second"] = program.audio_seconds / estimate["step_seconds"]
    return {
        "status": "compiled",
        "memory": dataclasses.asdict(memory) | {"total": memory.total, "hbm": chip.hbm_bytes},
        "verdict": verdict(memory.total, chip.hbm_bytes),
        "flops_per_device": flops,
        "flops_xla": flops_xla,
        "flops_jaxpr": flops_jaxpr,
        "bytes_accessed_per_device": bytes_accessed,
        "collectives": hlo.collective_summary(found),
        "largest_collective": dataclasses.asdict(largest) if largest else None,
        "estimate": estimate,
    }


def input_shardings(compiled) -> list:
    """The compiled executable's argument shardings, flattened (tests check the state's)."""
    import jax

    args, kwargs = compiled.input_shardings
    return jax.tree.leaves((args, kwargs))
