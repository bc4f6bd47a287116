"""f3_jax.aot's readers of the compiler's output (no libtpu needed): collectives of an optimized
HLO module by kind with loop trip counts, shape sizes, out-of-memory messages, the fit
verdict, the roofline estimate, and the command line's usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from f3_jax.aot import hlo, report
from f3_jax.aot.chips import CHIPS, GiB, check_topology, chip_of
from f3_jax.aot.early_verdict import GROWTH, EarlyVerdict
from f3_jax.errors import UsageError

# A cut-down optimized TPU module: an all-gather in a while loop of 12 iterations (scanned
# layers), an async all-reduce whose start and done share a channel, and a reduce-scatter
# written as an all-reduce inside an all-reduce-scatter fusion computation.
ROOT = Path(__file__).resolve().parents[1]

HLO = """HloModule jit_step, entry_computation_layout={(f32[8,128]{1,0})->f32[8,128]{1,0}}

%cond (p: (s32[], f32[8,128])) -> pred[] {
  %p = (s32[], f32[8,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(12)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p.1: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %p.1 = (s32[], f32[8,128]{1,0}) parameter(0)
  %x = f32[8,128]{1,0} get-tuple-element(%p.1), index=1
  %ag = bf16[32,128]{1,0} all-gather(%x), channel_id=3, dimensions={0}, metadata={op_name="s/ag"}
  ROOT %t = (s32[], f32[8,128]{1,0}) tuple(%i, %x)
}

%all-reduce-scatter.1 (a: f32[64]) -> f32[16] {
  %a = f32[64]{0} parameter(0)
  %ar = f32[64]{0} all-reduce(%a), channel_id=7, to_apply=%add
  ROOT %ds = f32[16]{0} dynamic-slice(%ar, %c), dynamic_slice_sizes={16}
}

ENTRY %main (x: f32[8,128]) -> f32[8,128] {
  %x = f32[8,128]{1,0} parameter(0)
  %s = f32[8,128]{1,0} all-reduce-start(%x), channel_id=5, to_apply=%add
  %d = f32[8,128]{1,0} all-reduce-done(%s), channel_id=5
  %w = (s32[], f32[8,128]{1,0}) while(%t0), condition=%cond, body=%body
  %f = f32[16]{0} fusion(%y), kind=kCustom, calls=%all-reduce-scatter.1
  ROOT %r = f32[8,128]{1,0} add(%d, %d)
}
"""


def test_collectives_by_kind_with_trip_counts():
    summary = hlo.collective_summary(hlo.collectives(HLO))
    assert summary["all-gather"] == {"count": 12, "bytes": 12 * 32 * 128 * 2, "largest_bytes": 8192}
    assert summary["all-reduce"]["count"] == 1  # start and done: one collective
    assert summary["all-reduce"]["bytes"] == 8 * 128 * 4
    assert summary["reduce-scatter"]["count"] == 1
    assert summary["all-to-all"]["count"] == 0
    gathers = [c for c in hlo.collectives(HLO) if c.kind == "all-gather"]
    assert gathers[0].op_name == "s/ag"


def test_shape_bytes():
    assert hlo.shape_bytes("(f32[2,3]{1,0}, bf16[4]{0}, pred[])") == 24 + 8 + 1
    assert hlo.shape_bytes("s4[8]") == 4


def test_out_of_memory_messages():
    message = (
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space "
        "hbm. Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G."
    )
    need, have = report.out_of_memory(message)
    assert need == int(20.5 * GiB) and have == int(15.75 * GiB)
    assert report.out_of_memory("INTERNAL: something else") is None


def test_verdict_and_roofline():
    assert report.verdict(GiB, 2 * GiB) == "fits"
    assert report.verdict(3 * GiB, 2 * GiB) == "does not fit by 1.00 GiB"
    chip = chip_of("v5e:4x4")
    assert chip is CHIPS["v5e"] and chip.hbm_bytes == 16 * GiB
    compute_bound = report.roofline(chip.peak_bf16_flops, 1.0, chip)
    assert compute_bound["bound"] == "compute" and compute_bound["mfu"] == pytest.approx(1.0)
    memory_bound = report.roofline(1.0, 2 * chip.hbm_bytes_per_s, chip)
    assert memory_bound["bound"] == "memory"
    assert memory_bound["step_seconds"] == pytest.approx(2.0)
    assert "estimate" in memory_bound["note"] and "not measured" in memory_bound["note"]


def test_usage_errors_are_one_line():
    run = subprocess.run(
        [sys.executable, "-m", "f3_jax.aot_compile", "--topology=v5e:2x2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == "error: --config is required (a configs/*.py file)"


@pytest.mark.parametrize("name", ["v7:2x2", "v5e", "v5e:2x2x", "tpu:4x4", ""])
def test_topology_names_are_checked_before_anything_is_built(name):
    with pytest.raises(UsageError, match="expected <chip>:<shape>"):
        check_topology(name)
    check_topology("v5p:4x4x4")


def _memory_report(directory: Path, total: int) -> None:
    """What XLA writes after assigning buffers (the head of its memory-usage report)."""
    name = "module_0003.jit_train_step_fn.cl_1.after_optimizations-memory-usage-report.txt"
    (directory / name).write_text(
        f"Memory Space: default (color=0)\nTotal bytes: {total} ({total / GiB:.2f}GiB)\n"
        "  cumulative_size;       size;       offset; used_by_n_values; shapes_list\n"
    )  # fmt: skip


def test_assigned_bytes_of_the_memory_usage_report(tmp_path):
    assert hlo.assigned_bytes(str(tmp_path)) is None  # not written yet
    _memory_report(tmp_path, 1953620480)
    assert hlo.assigned_bytes(str(tmp_path)) == 1953620480


@pytest.mark.parametrize("gib,fits", [(12.8, True), (13.6, False)])
def test_early_verdict_once_the_buffers_are_assigned(tmp_path, gib, fits):
    import threading

    got, called = [], threading.Event()
    base = {"program": "train", "description": "a step"}
    watcher = EarlyVerdict(
        str(tmp_path), CHIPS["v5e"], lambda r: got.append(r) or called.set(), base, grace=0.1
    )
    _memory_report(tmp_path, int(gib * GiB))
    assert called.wait(10), "no verdict after the report was written"
    (r,) = got
    assert r["status"] == "assigned" and r["program"] == "train"
    total = int(gib * GiB)
    assert r["memory"]["assigned"] == total and r["memory"]["hbm"] == 16 * GiB
    assert r["memory"]["total"] == pytest.approx(total * GROWTH, abs=1)  # the finished compile's
    assert r["verdict"].startswith("fits" if fits else "does not fit by 1.00 GiB")
    assert not tmp_path.exists()  # the dump is removed: the callback may end the process
    watcher.finished()


def test_no_early_verdict_once_the_compile_has_ended(tmp_path):
    got = []
    watcher = EarlyVerdict(str(tmp_path), CHIPS["v5e"], got.append, {}, grace=0.5)
    _memory_report(tmp_path, GiB)
    watcher.finished()  # the compiler failed or finished within the grace period: its report wins
    watcher._thread.join(5)
    assert got == [] and tmp_path.exists()


def test_memory_only_needs_one_program():
    run = subprocess.run(
        [
            sys.executable, "-m", "f3_jax.aot_compile", "--config=configs/ae_demo.py",
            "--topology=v5e:2x2", "--memory_only",
        ],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().startswith("error: --memory_only compiles one program")


def test_largest_batch_search_doubles_and_halves(tmp_path, monkeypatch):
    """benchmarks/aot_sweep.py largest: from the config's per-chip batch, double while the step
    fits and halve while it does not (the compiles stood in for by a memory threshold)."""
    import json

    from benchmarks import aot_sweep, aot_tables

    trials = []

    def fake_run(cells, programs, out, extra, tag):
        (cell,) = cells
        batch = int(next(e for e in extra if "batch_size" in e).split("=")[1])
        per_chip = batch // aot_tables.chips(cell.split("@")[1])
        trials.append(per_chip)
        fits = per_chip <= limit
        train = {
            "status": "assigned" if fits else "does not fit",
            "verdict": "fits" if fits else "does not fit by 1 GiB",
        }
        with open(aot_sweep._cell_path(out, cell, tag), "w") as f:
            json.dump({"programs": {"train": train}}, f)

    monkeypatch.setattr(aot_sweep, "run", fake_run)
    assert aot_tables.chips("v5p:2x4x4") == 32 and aot_tables.chips("v6e:8x8") == 64
    limit = 32  # repr_24k: global batch 256 on 16 v5e chips, 16 per chip
    assert aot_sweep.largest(["repr_24k@v5e:4x4"], str(tmp_path), []) == {"repr_24k@v5e:4x4": 32}
    assert trials == [16, 32, 64]
    trials.clear()
    limit = 2
    (tmp_path / "b").mkdir()
    found = aot_sweep.largest(["repr_24k@v5p:2x4x4"], str(tmp_path / "b"), [])
    assert found == {"repr_24k@v5p:2x4x4": 2} and trials == [8, 4, 2]
    trials.clear()
    limit = 0
    (tmp_path / "c").mkdir()
    found = aot_sweep.largest(["repr_24k@v5e:4x4"], str(tmp_path / "c"), [])
    assert found == {"repr_24k@v5e:4x4": None} and trials == [16, 8, 4, 2, 1]


def _report(topology: str, batch: int, status: str, total_gib: float, **variant) -> dict:
    """A stand-in of one `aot_compile --json` report (train program only)."""
    train = {
        "status": status,
        "verdict": "fits" if status in ("compiled", "assigned") else "does not fit by 1 GiB",
        "compile_seconds": 60.0,
        "memory": {"total": total_gib * GiB, "hbm": 16 * GiB},
        "estimate": {"step_seconds": 0.1, "bound": "memory", "mfu": 0.5},
        "largest_collective": {"kind": "all-gather", "bytes": 2**20},
    }
    return {
        "config": "configs/x_24k.py", "topology": topology, "num_slices": 1,
        "global_batch": batch, "programs": {"train": train}, "mesh": {"data": 1, "fsdp": 16},
        "variant": {"tag": variant.get("tag", ""), "overrides": variant.get("overrides", [])},
    }  # fmt: skip


def test_summary_says_what_each_topology_compiled_and_the_largest_batch():
    """benchmarks/aot_tables.py: one cell per config and topology from its reports; a finished
    compile wins over a buffer-assignment trial; the historic reports are left out."""
    from benchmarks import aot_tables

    memory_only = ["--memory_only"]
    reports = [
        _report("v5e:4x4", 64, "compiled", 5.0),
        _report("v5e:4x4", 64, "assigned", 5.5, tag="b4pc", overrides=memory_only),
        _report("v5e:4x4", 128, "assigned", 7.0, tag="b8pc", overrides=memory_only),
        _report("v5e:4x4", 256, "does not fit", 20.0, tag="b16pc", overrides=memory_only),
        _report("v5e:4x4", 64, "does not fit", 99.0, tag="old", overrides=["(before X)"]),
        _report("v5p:2x4x4", 64, "assigned", 3.0, tag="memory", overrides=memory_only),
        _report("v6e:8x8", 64, "does not fit", 40.0),
        _report("v6e:8x8", 64, "compiled", 9.0, overrides=["--config.encoder.remat=full"]),
    ]
    text = aot_tables.summary(reports)
    header, _, row = text.splitlines()
    topologies = ["v5e:4x4 (16 chips)", "v5p:2x4x4 (32 chips)", "v6e:8x8 (64 chips)"]
    assert header.split(" | ")[1:4] == topologies
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "`x_24k` (64)"
    assert cells[1] == "**compiled**, 5.00 / 16 GiB (60 s) at 4 per chip; largest 8 per chip"
    assert cells[2] == "fits (3.0 GiB est.) at 2 per chip"
    assert cells[3] == (
        "does not fit (40.0 GiB) at 1 per chip; "
        "with encoder.remat=full: **compiled**, 9.00 / 16 GiB (60 s) at 1 per chip"
    )
    assert cells[4] == "v5e, v6e"
    assert aot_tables.largest_fitting(reports[3:4]) is None
    # A finished compile that fits overrules a trial's verdict (its 1.25 margin) at that batch.
    overruled = [reports[3], _report("v5e:4x4", 256, "compiled", 15.0, tag="")]
    assert aot_tables.largest_fitting(overruled) == 16
    assert aot_tables.largest_fitting(reports[6:]) is None  # a variant's compile does not count
    compiled_rows = aot_tables.full_table(reports, finished_only=True).splitlines()[2:]
    assert len(compiled_rows) == 3 and "99.00" not in "".join(compiled_rows)
    assert len(aot_tables.full_table(reports, finished_only=False).splitlines()) == 2 + 8


def test_a_family_compiled_only_at_least_effort_says_so():
    """A `--fast` compile (least optimization effort) counts as compiled for its chip family,
    marked, unless a compile at training's effort exists for the family too."""
    from benchmarks import aot_tables

    fast = _report("v6e:4x4", 64, "compiled", 9.0, tag="fast", overrides=["--fast"])
    plain = _report("v5p:2x4x4", 64, "compiled", 4.0)
    row = aot_tables.summary([fast, plain]).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == (
        "with least compile effort (--fast): **compiled**, 9.00 / 16 GiB (60 s) at 4 per chip"
    )
    assert cells[3] == "v5p, v6e (--fast)"
    full = _report("v6e:8x8", 64, "compiled", 9.0)
    assert aot_tables.summary([fast, plain, full]).splitlines()[2].endswith("| v5p, v6e |")
    # A report of other programs only (eval, codec, generation) is a row of the full table.
    others = _report("v5p:2x4x4", 64, "compiled", 2.0, tag="programs")
    others["programs"] = {"eval": others["programs"].pop("train")}
    assert aot_tables.summary([fast, plain, others]) == aot_tables.summary([fast, plain])
    assert "| eval |" in aot_tables.full_table([others], finished_only=True)


def test_the_printed_report_names_non_default_compiler_options():
    """`aot_compile --fast`: the report says its memory and cost are that compile's."""
    from f3_jax import aot_compile

    path = ROOT / "benchmarks/reports/aot/ae_24k@v6e_4x4+fast.json"
    result = json.loads(path.read_text())
    result["compiler_options"] = dict(aot_compile.FAST_OPTIONS)
    assert (
        "compiler options exec_time_optimization_effort=-1.0: memory and cost are this "
        "compile's" in aot_compile.render(result)
    )
    result["compiler_options"] = {}
    assert "compiler options" not in aot_compile.render(result)


def test_committed_tables_are_what_the_committed_reports_render_to():
    """README's "What fits where" and RESULTS.md's table are rendered from
    benchmarks/reports/aot: a report added without `aot_sweep.py table --write` fails here."""
    from benchmarks import aot_tables

    results = aot_tables.load()
    assert results, "no reports in benchmarks/reports/aot"
    for name, marker, kind in aot_tables.TARGETS:
        text = (ROOT / name).read_text()
        expected = aot_tables.replace_between(text, marker, aot_tables.render(kind, results))
        assert text == expected, f"{name} <!-- {marker} -->: run aot_sweep.py table --write"
    with pytest.raises(ValueError, match="NOPE"):
        aot_tables.replace_between("text", "NOPE", "body")
