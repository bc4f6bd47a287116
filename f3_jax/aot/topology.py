"""Described TPU devices, and meshes of them, on a machine that has no TPU.

libtpu (`pip install ".[tpu]"`) builds a compile-only client for a topology name such as
"v5e:16x16": its devices have kinds, coordinates and slice indices, and programs compile for
them, but nothing runs. `use_cpu_runtime()` must come before anything initializes a JAX
backend: the runtime stays on the CPU even on a machine that has a TPU.
"""

from __future__ import annotations

import os

import numpy as np

from f3_jax import parallel
from f3_jax.aot.chips import check_topology
from f3_jax.config import resolve_mesh_shape
from f3_jax.errors import UsageError


def use_cpu_runtime() -> None:
    """JAX runs on the CPU; libtpu is only asked to describe and compile."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    # Without a TPU, libtpu warns that it cannot find the accelerator type and worker
    # hostnames; these quiet it. Its lock file (/tmp/libtpu_lockfile) would also stop a
    # second process from describing topologies, which is harmless here: nothing runs.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def libtpu_version() -> str | None:
    """The installed libtpu's version, or None when it is not installed."""
    from importlib import metadata

    for name in ("libtpu", "libtpu-nightly"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def describe(topology: str, num_slices: int = 1) -> list:
    """The devices of `num_slices` slices of `topology` ("v5e:16x16"), in id order."""
    check_topology(topology)
    if num_slices < 1:
        raise UsageError(f"--num_slices={num_slices} must be at least 1")
    if libtpu_version() is None:
        raise UsageError('--topology needs libtpu: pip install -e ".[tpu]"')
    from jax.experimental import topologies

    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, **kwargs)
    except Exception as e:  # noqa: BLE001  libtpu's INVALID_ARGUMENT for a bad shape
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--topology={topology}: libtpu cannot describe it: {first}") from e
    return sorted(desc.devices, key=lambda d: d.id)


def mesh_for(mesh_cfg, devices: list, num_slices: int = 1):
    """The run's ("data", "fsdp", "tensor") mesh on `devices`: as training builds it on one
    slice; over several slices, the data axis spans the slices (data-center network) and
    fsdp and tensor stay inside each slice (ICI)."""
    if num_slices == 1:
        return parallel.make_mesh(mesh_cfg, devices)
    from jax.experimental import mesh_utils
    from jax.sharding import AxisType, Mesh

    data, fsdp, tensor = resolve_mesh_shape(mesh_cfg, len(devices))
    if data % num_slices:
        raise UsageError(
            f"--num_slices={num_slices} splits the data axis over slices, but "
            f"config.mesh.data={data} is not a multiple of it: set --config.mesh.data "
            f"(e.g. {num_slices}) and another axis to -1"
        )
    grid = mesh_utils.create_hybrid_device_mesh(
        (data // num_slices, fsdp, tensor), (num_slices, 1, 1), devices
    )
    return Mesh(np.asarray(grid), parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
