"""Compiling for TPU slices without a TPU (f3_jax.aot, python -m f3_jax.aot_compile).

Needs libtpu (pip install -e ".[tpu]"); skipped otherwise. The fast tests compile small
programs for described v5e devices through the same report as the stages; the stage
programs take minutes each for the TPU compiler on a small CPU machine (pytest -m slow).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason='libtpu is not installed (pip install -e ".[tpu]"): no TPU compiles',
)

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


@pytest.fixture(scope="module")
def v5e_2x2():
    """A ("data", "fsdp", "tensor") = (1, 4, 1) mesh of four described v5e chips."""
    import ml_collections

    from f3_jax.aot import topology

    topology.use_cpu_runtime()
    devices = topology.describe("v5e:2x2")
    mesh_cfg = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    return topology.mesh_for(mesh_cfg, devices)


def _matmul_program(mesh, rows: int, name: str = "matmul"):
    """x @ w with x split over fsdp and w replicated: an all-reduce-free program whose
    arguments and temporaries have known sizes."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from f3_jax.aot.programs import Program

    x = jax.ShapeDtypeStruct(
        (rows, 1024), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    )
    w = jax.ShapeDtypeStruct(
        (1024, 1024), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec())
    )
    fn = jax.jit(lambda x, w: jnp.tanh(x @ w).sum(axis=0))
    return Program(name, f"{rows} x 1024 @ 1024 x 1024", lambda: fn.trace(x, w).lower())


def test_report_of_a_program_that_fits(v5e_2x2):
    from f3_jax.aot import report
    from f3_jax.aot.chips import CHIPS

    chip = CHIPS["v5e"]
    result, compiled = report.compile_program(_matmul_program(v5e_2x2, 4096), chip)
    assert compiled is not None and result["status"] == "compiled"
    memory = result["memory"]
    assert memory["arguments"] >= (4096 // 4 + 1024) * 1024 * 4  # its shard of x, and w
    assert all(memory[k] >= 0 for k in ("outputs", "temporaries", "generated_code"))
    assert memory["total"] == sum(
        memory[k] for k in ("arguments", "outputs", "temporaries", "generated_code")
    )
    assert memory["total"] <= memory["hbm"] == 16 * GiB and result["verdict"] == "fits"
    assert result["flops_per_device"] >= 2 * 1024 * 1024 * 1024  # 1024 rows per chip
    assert result["bytes_accessed_per_device"] > 0
    estimate = result["estimate"]
    assert estimate["step_seconds"] > 0 and 0 < estimate["mfu"] <= 1
    assert "not measured" in estimate["note"]
    # The column sum over the split rows is an all-reduce over fsdp.
    assert result["collectives"]["all-reduce"]["count"] >= 1
    assert result["largest_collective"]["bytes"] > 0


def test_a_program_too_big_is_reported_as_not_fitting(v5e_2x2):
    from f3_jax.aot import report
    from f3_jax.aot.chips import CHIPS

    rows = 24 * 1024 * 1024  # 96 GiB of f32 rows: 24 GiB per chip, over a v5e's 16
    result, compiled = report.compile_program(_matmul_program(v5e_2x2, rows), CHIPS["v5e"])
    assert compiled is None and result["status"] == "does not fit", result
    assert result["verdict"].startswith("does not fit by ")
    over = float(result["verdict"].split(" by ")[1].split()[0])
    assert over > 0
    assert result["memory"]["total"] > result["memory"]["compiler_available"]
    largest = result["largest_buffers"][0]
    assert largest["bytes"] >= rows // 4 * 1024 * 4  # its shard of x
    assert largest["shape"].startswith("f32[6291456,1024]")


def _stage_report(config_name: str, topology: str, overrides: dict, only=("train",)):
    from f3_jax.aot import topology as topology_lib
    from f3_jax.aot.stage import compile_stage, load_config_file

    topology_lib.use_cpu_runtime()
    path = str(ROOT / "configs" / config_name)
    config = load_config_file(path)
    for key, value in overrides.items():
        group, field = key.split(".")
        config[group][field] = value
    return compile_stage(config, topology, config_path=path, only=only, keep_compiled=True)


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["ae_demo.py", "repr_demo.py", "flow_demo.py"])
def test_each_demo_train_step_compiles_for_v5e_2x2(config_name):
    result = _stage_report(config_name, "v5e:2x2", {"mesh.data": 1, "mesh.fsdp": -1})
    train = result["programs"]["train"]
    assert train["status"] == "compiled", train.get("error")
    assert train["verdict"] == "fits" and train["memory"]["total"] > 0


@pytest.mark.slow
def test_a_full_size_config_compiles_for_16_v5e_chips_with_the_state_split_by_the_rules():
    import jax

    result = _stage_report("repr_24k.py", "v5e:4x4", {"train.batch_size": 16})
    assert result["programs"]["train"]["status"] == "compiled"
    trainer, compiled = result["trainer"], result["compiled"]["train"]
    (trained, _constants, _frozen, _batch), _ = compiled.input_shardings
    expected, _ = trainer.split_state(trainer.shardings)
    shapes, _ = trainer.split_state(trainer.abstract_state())
    got, want = jax.tree.leaves(trained), jax.tree.leaves(expected)
    assert len(got) == len(want)
    for g, w, x in zip(got, want, jax.tree.leaves(shapes)):
        assert g.is_equivalent_to(w, x.ndim), (g, w, x.shape)
    assert any("fsdp" in str(s.spec) for s in want)  # the rules do split this state


@pytest.mark.slow
def test_cli_writes_the_json_report(tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [
            sys.executable, "-m", "f3_jax.aot_compile", "--config=configs/flow_demo.py",
            "--topology=v5e:2x2", "--programs=generate", f"--json={out}",
        ],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["programs"]["generate"]["status"] == "compiled"
    assert "| generate |" in run.stdout


def test_two_slices_put_the_data_axis_over_the_slices():
    import ml_collections
    import numpy as np

    from f3_jax.aot import report, topology
    from f3_jax.aot.chips import CHIPS

    topology.use_cpu_runtime()
    devices = topology.describe("v5e:2x2", num_slices=2)
    assert len(devices) == 8 and {d.slice_index for d in devices} == {0, 1}
    mesh_cfg = ml_collections.ConfigDict({"data": 2, "fsdp": -1, "tensor": 1})
    mesh = topology.mesh_for(mesh_cfg, devices, num_slices=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slices[0] == 0).all() and (slices[1] == 1).all()  # one slice per data row
    result, _ = report.compile_program(_matmul_program(mesh, 4096), CHIPS["v5e"])
    assert result["status"] == "compiled" and result["verdict"] == "fits"


@pytest.mark.slow
def test_memory_only_reports_the_assignment_and_ends_early(tmp_path):
    """--memory_only: the verdict from the buffer assignment, the process ended before the
    code generation (the full compile of this step takes tens of minutes here)."""
    out = tmp_path / "report.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [
            sys.executable, "-m", "f3_jax.aot_compile", "--config=configs/ae_demo.py",
            "--topology=v5e:2x2", "--config.mesh.data=1", "--config.mesh.fsdp=-1",
            "--programs=train", "--memory_only", f"--json={out}",
        ],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    train = json.loads(out.read_text())["programs"]["train"]
    assert train["status"] == "assigned" and train["verdict"].startswith("fits (buffer assignment")
    assert 0 < train["memory"]["total"] < 16 * GiB and train["largest_buffers"]
    assert "fits (buffer assignment" in run.stdout
