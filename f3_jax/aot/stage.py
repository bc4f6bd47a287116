"""Compile a stage's programs for a TPU topology: the library behind `f3_jax.aot_compile`.

    result = compile_stage(config, "v5e:16x16", config_path="configs/repr_24k.py")

builds the stage's trainer on a mesh of the topology's described devices, frozen earlier
stages and the LLM as shapes (an export that is missing is stood in for by a stage config),
and compiles each program (f3_jax.aot.programs) with a report (f3_jax.aot.report).
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable

from f3_jax import stages
from f3_jax.aot import programs as programs_lib
from f3_jax.aot import report as report_lib
from f3_jax.aot import topology as topology_lib
from f3_jax.aot.chips import chip_of
from f3_jax.errors import UsageError

# The earlier stages a stage runs frozen, and the flag naming a stand-in config for each.
_NEEDS = {"representation": ("autoencoder",), "flow": ("autoencoder", "representation")}
STAND_IN_FLAGS = {"autoencoder": "ae_config", "representation": "repr_config"}
_PREFIX = {"autoencoder": "ae", "representation": "repr"}


def _has_export(workdir: str) -> bool:
    return bool(workdir) and (
        os.path.exists(os.path.join(workdir, "weights.safetensors"))
        or os.path.exists(os.path.join(workdir, "export", "config.json"))
    )


def load_config_file(path: str):
    spec = importlib.util.spec_from_file_location(f"_aot_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def stand_ins(config, config_path: str | None, given: dict | None = None) -> dict:
    """{"autoencoder": config, "representation": config} for each earlier stage whose export
    is missing: the given config, else the same size's config file next to `config_path`
    (configs/flow_24k.py -> configs/ae_24k.py, configs/repr_24k.py)."""
    out = {}
    for group in _NEEDS.get(config.stage, ()):
        if _has_export(config[group].workdir):
            continue  # the export's own config is read; its weights stay shapes
        chosen = (given or {}).get(group)
        if chosen is None:
            chosen = _sibling(config_path, group)
        out[group] = chosen
    return out


def _sibling(config_path: str | None, group: str):
    flag = STAND_IN_FLAGS[group]
    if config_path:
        directory, name = os.path.split(config_path)
        size = name.split("_", 1)[1] if "_" in name else name
        path = os.path.join(directory, f"{_PREFIX[group]}_{size}")
        if os.path.exists(path):
            return load_config_file(path)
    raise UsageError(
        f"config.{group}.workdir has no export and no {_PREFIX[group]}_* config sits next to "
        f"--config: pass --{flag}=configs/{_PREFIX[group]}_<size>.py to stand in for it"
    )


def build(config, topology: str, num_slices: int = 1, config_path=None, given=None):
    """(trainer, chip) on a mesh of `num_slices` slices of `topology`."""
    devices = topology_lib.describe(topology, num_slices)
    try:
        chip = chip_of(topology)
    except KeyError as e:
        raise UsageError(f"--topology={topology}: no chip numbers for {e}") from e
    stages.check_config(config, len(devices))
    mesh = topology_lib.mesh_for(config.mesh, devices, num_slices)
    trainer = stages.create_trainer(
        config, mesh, abstract_frozen=True, stand_ins=stand_ins(config, config_path, given)
    )
    return trainer, chip


def compile_stage(
    config,
    topology: str,
    *,
    num_slices: int = 1,
    config_path: str | None = None,
    given_stand_ins: dict | None = None,
    only: tuple[str, ...] = (),
    options: dict | None = None,
    keep_compiled: bool = False,
    progress: Callable[[str], None] = lambda line: None,
    on_assigned: Callable[[dict], None] | None = None,
) -> dict:
    """Builds, compiles and reports each program ("only": a subset by name). With
    keep_compiled, result["compiled"] holds {name: executable} (not JSON). on_assigned:
    called with the whole result, this program's report of status "assigned", as soon as a
    program's buffers are assigned (report.compile_program)."""
    import jax

    start = time.perf_counter()
    trainer, chip = build(config, topology, num_slices, config_path, given_stand_ins)
    found = programs_lib.programs(trainer)
    unknown = [p for p in only if p not in found]
    if unknown:
        raise UsageError(f"--programs: {', '.join(unknown)} not among {', '.join(found)}")
    result = {
        "config": config_path or "",
        "stage": config.stage,
        "topology": topology,
        "num_slices": num_slices,
        "chip": chip.name,
        "devices": math.prod(trainer.mesh.shape.values()),
        "mesh": dict(trainer.mesh.shape),
        "global_batch": int(config.train.batch_size),
        "jax": jax.__version__,
        "libtpu": topology_lib.libtpu_version(),
        "build_seconds": time.perf_counter() - start,
        # Non-default XLA options (`--fast`): the verdict is that compile's, not training's.
        "compiler_options": dict(options or {}),
        "programs": {},
        "note": report_lib.ESTIMATE,
    }
    compiled = {}
    for name, program in found.items():
        if only and name not in only:
            continue
        progress(f"compiling {name}: {program.description} ...")
        early = on_assigned and (
            lambda r, name=name: on_assigned(result | {"programs": result["programs"] | {name: r}})
        )
        report, compiled[name] = report_lib.compile_program(program, chip, options, early)
        result["programs"][name] = report
        progress(f"{name}: {report['status']} in {report['compile_seconds']:.0f} s")
    if keep_compiled:
        result["compiled"] = compiled
        result["trainer"] = trainer
    return result
