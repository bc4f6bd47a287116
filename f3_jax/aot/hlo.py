"""What the optimized HLO text of a compiled program says: its collectives, and (from XLA's
buffer-assignment dump) its largest buffers.

Collectives. The TPU compiler wraps collectives in async start/done fusions that repeat the
same instruction (same `channel_id`) in several computations, and writes a reduce-scatter as
an all-reduce inside a fusion computation named `all-reduce-scatter...`. So each collective
is counted once per channel, classified by its computation, and sized by its result (bytes
per device). A collective inside a while loop (scanned layers) runs once per iteration: the
loop's trip count is read from its condition (`i < N`) and multiplies the count.

Buffers. `xla_dump_to` makes XLA write `*buffer-assignment.txt` (also when the program does
not fit: then it is the only account of the memory); its `value:` lines give each buffer's
size and the HLO instruction that defines it, and the HLO's metadata maps that instruction to
the JAX operation (`op_name`) and source line that made it.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {
    "pred": 1,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
_CALLS = re.compile(r"\b(calls|body|condition|to_apply|branch_computations)=\{?%?([^,}\s]+)")
_COLLECTIVE = re.compile(r"^(" + "|".join(KINDS) + r")(-start)?$")


def shape_bytes(text: str) -> int:
    """Bytes of every array in an HLO shape string (a tuple's elements summed)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(text):
        if dtype not in _DTYPE_BYTES:
            continue
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += n * _DTYPE_BYTES[dtype]
    return int(total)


@dataclasses.dataclass
class _Instruction:
    name: str
    shape: str
    opcode: str
    rest: str


@dataclasses.dataclass
class _Computation:
    name: str
    instructions: list[_Instruction]
    is_entry: bool


def parse_computations(hlo: str) -> dict[str, _Computation]:
    """The computations of an HLO module's text, each with its instructions."""
    out: dict[str, _Computation] = {}
    current = None
    for line in hlo.splitlines():
        head = _COMPUTATION.match(line)
        if head and not line.startswith(" "):
            current = _Computation(head.group(1), [], line.startswith("ENTRY"))
            out[current.name] = current
            continue
        if current is None:
            continue
        if line.startswith("}"):
            current = None
            continue
        inst = _INSTRUCTION.match(line)
        if inst:
            current.instructions.append(_Instruction(*inst.groups()))
    return out


def _trip_count(condition: _Computation | None) -> int | None:
    """N of a loop whose condition is `counter < N` with one integer constant, else None."""
    if condition is None:
        return None
    constants = [
        int(m.group(1))
        for i in condition.instructions
        if i.opcode == "constant" and re.match(r"[su]\d+\[\]", i.shape)
        for m in [re.match(r"(-?\d+)\)", i.rest)]
        if m
    ]
    compares = [i for i in condition.instructions if i.opcode == "compare"]
    if len(constants) == 1 and len(compares) == 1 and "direction=LT" in compares[0].rest:
        return constants[0]
    return None


def _multipliers(comps: dict[str, _Computation]) -> dict[str, int]:
    """How many times each computation runs per call of the entry (while bodies x trip count;
    a loop whose count cannot be read counts once)."""
    times: dict[str, int] = {}
    stack = [(c.name, 1) for c in comps.values() if c.is_entry]
    while stack:
        name, n = stack.pop()
        if times.get(name, 0) >= n or name not in comps:
            continue
        times[name] = n
        for inst in comps[name].instructions:
            called = dict((k, v) for k, v in _CALLS.findall(inst.rest))
            trips = 1
            if inst.opcode == "while":
                trips = _trip_count(comps.get(called.get("condition", ""))) or 1
            for key, callee in _CALLS.findall(inst.rest):
                stack.append((callee, n * trips if key == "body" else n))
    return times


@dataclasses.dataclass
class Collective:
    kind: str
    bytes: int  # result bytes per device, per execution
    count: int  # executions per call of the program (loop trip counts included)
    op_name: str  # the JAX operation it came from (HLO metadata), when recorded


def collectives(hlo: str) -> list[Collective]:
    """Every collective of an optimized HLO module, once per channel."""
    comps = parse_computations(hlo)
    times = _multipliers(comps)
    found: dict[str, Collective] = {}
    for comp in comps.values():
        for inst in comp.instructions:
            match = _COLLECTIVE.match(inst.opcode)
            if not match:
                continue
            kind = match.group(1)
            if kind == "all-reduce" and comp.name.startswith("all-reduce-scatter"):
                kind = "reduce-scatter"
            channel = re.search(r"channel_id=(\d+)", inst.rest)
            key = f"{kind}:{channel.group(1)}" if channel else f"{kind}:{inst.name}"
            op = re.search(r'op_name="([^"]*)"', inst.rest)
            item = Collective(
                kind,
                shape_bytes(inst.shape),
                times.get(comp.name, 1),
                op.group(1) if op else "",
            )
            have = found.get(key)
            if have is None or (item.count, item.bytes) > (have.count, have.bytes):
                found[key] = item
    return list(found.values())


def collective_summary(items: list[Collective]) -> dict[str, dict]:
    """{kind: {count, bytes (per call, all executions), largest_bytes}} for every kind."""
    out = {k: {"count": 0, "bytes": 0, "largest_bytes": 0} for k in KINDS}
    for c in items:
        row = out[c.kind]
        row["count"] += c.count
        row["bytes"] += c.bytes * c.count
        row["largest_bytes"] = max(row["largest_bytes"], c.bytes)
    return out


# ---- buffers ------------------------------------------------------------------------------
@dataclasses.dataclass
class Buffer:
    """Buffers of one JAX operation and shape: `count` of them, `bytes` each."""

    bytes: int
    count: int
    shape: str
    op_name: str  # the JAX operation (HLO metadata), else the HLO instruction's name
    source: str  # file:line of that operation, "" when not recorded
    parameter: bool  # an argument of the program (state, batch, frozen weights)


_VALUE = re.compile(r"^ value: <\d+ ([^ >]+) @\d+> \(size=(\d+),offset=\d+\): (.*)$")
_ALLOCATION = re.compile(r"^allocation \d+: size \d+(.*)$")


def largest_buffers(dump_dir: str, top: int = 5) -> list[Buffer]:
    """The `top` largest buffers of the program dumped in `dump_dir`, those of one operation
    and shape taken together (they need not all be live at once: XLA reuses memory)."""
    assignment = _newest(dump_dir, "*after_optimizations-buffer-assignment.txt")
    if assignment is None:
        return []
    hlo_file = _newest(dump_dir, "*after_optimizations.txt")
    metadata = _metadata(open(hlo_file).read()) if hlo_file else {}
    groups: dict[tuple[str, str], Buffer] = {}
    parameter = False
    with open(assignment) as f:
        for line in f:
            alloc = _ALLOCATION.match(line)
            if alloc:
                parameter = "parameter" in alloc.group(1)
                continue
            value = _VALUE.match(line)
            if not value:
                continue
            name = re.sub(r"\{.*\}$", "", value.group(1))
            size, shape = int(value.group(2)), re.sub(r"\{[^}]*\}$", "", value.group(3).strip())
            op_name, source = metadata.get(name, ("", ""))
            key = (op_name or name, shape)
            group = groups.setdefault(key, Buffer(size, 0, shape, key[0], source, parameter))
            group.count += 1
    return sorted(groups.values(), key=lambda b: -b.bytes * b.count)[:top]


def _newest(directory: str, pattern: str) -> str | None:
    files = glob.glob(os.path.join(directory, pattern))
    return max(files, key=os.path.getmtime) if files else None


def _metadata(hlo: str) -> dict[str, tuple[str, str]]:
    """instruction name -> (op_name, "file:line") from an HLO module's text."""
    tables = _tables(hlo)
    files = {k: v.strip('"') for k, v in tables.get("FileNames", {}).items()}
    locations = {
        k: f"{os.path.basename(files.get(m.group(1), '?'))}:{m.group(2)}"
        for k, v in tables.get("FileLocations", {}).items()
        for m in [re.search(r"file_name_id=(\d+) .*?line=(\d+)", v)]
        if m
    }
    frames = {
        k: m.group(1)
        for k, v in tables.get("StackFrames", {}).items()
        for m in [re.search(r"file_location_id=(\d+)", v)]
        if m
    }
    out = {}
    for name, op_name, frame in re.findall(
        r'%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"(?: stack_frame_id=(\d+))?', hlo
    ):
        out[name] = (op_name, locations.get(frames.get(frame, ""), ""))
    return out


def _tables(hlo: str) -> dict[str, dict[str, str]]:
    """The numbered tables (FileNames, FunctionNames, FileLocations, StackFrames) that head
    an HLO module's text: {table: {id: entry}}."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
            continue
        entry = re.match(r"^(\d+) (.*)$", line)
        if current is not None and entry:
            current[entry.group(1)] = entry.group(2)
        elif current is not None:
            current = None
    return tables


_TOTAL = re.compile(r"^Memory Space: default.*\n\s*Total bytes: (\d+)", re.MULTILINE)


def assigned_bytes(dump_dir: str) -> int | None:
    """Bytes of device memory ("default" memory space: HBM) that XLA's buffer assignment gave
    the newest program dumped in `dump_dir`, from its memory-usage report; None before the
    report is written. Written before code generation, so known long before the compile ends."""
    report = _newest(dump_dir, "*after_optimizations-memory-usage-report.txt")
    if report is None:
        return None
    with open(report) as f:
        match = _TOTAL.search(f.read(4096))  # the total heads the report
    return int(match.group(1)) if match else None
