"""Device mesh and the one table mapping logical parameter axes to mesh axes.

Every parameter is created with `flax.linen.with_logical_partitioning` and a tuple of logical
axis names from `LOGICAL_AXES`. `RULES` maps those names to the mesh axes
("data", "fsdp", "tensor"). A mesh axis that does not divide a dimension is dropped for that
dimension (the dimension is then replicated), so small layers (a 1-channel input convolution)
never make a config unshardable; a leaf that loses "fsdp" that way takes it on another
dimension that it divides (`logical_to_spec`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from f3_jax.config import resolve_mesh_shape

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or None: replicated). One table for all stages.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    # convolutions: kernels are (width, in, out)
    ("conv_width", None),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("conv_freq", None),  # 2-D (discriminator) kernels are (time, freq, in, out)
    ("channels", None),  # per-channel vectors: biases, Snake alphas, weight-norm gains
    # transformers
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # small dense layers (bottleneck projections, heads, adapters, flow head)
    ("dense_in", "fsdp"),
    ("dense_out", "tensor"),
    ("codebooks", None),
    ("codes", None),
)
LOGICAL_AXES = tuple(name for name, _ in RULES)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh ("data", "fsdp", "tensor") with Auto axes, sized from config (-1 fills)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _mesh_axes_for(logical: str | None):
    if logical is None:
        return None
    for name, axes in RULES:
        if name == logical:
            return axes
    raise KeyError(f"logical axis {logical!r} is not in f3_jax.parallel.RULES")


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh
) -> PartitionSpec:
    """PartitionSpec of one array; mesh axes that don't divide their dimension are dropped.

    A leaf meant for "fsdp" whose fsdp dimension is not divisible (a 64-channel kernel at
    fsdp=128, SmolLM2's 576-wide embedding at fsdp=256) takes "fsdp" on its largest other
    dimension that it divides, so the state keeps falling as 1/fsdp on large meshes.
    """
    used: set[str] = set()
    spec: list = []
    wants_fsdp = False
    for name, dim in zip(logical_axes, shape):
        axes = _mesh_axes_for(name)
        flat = _flat(axes)
        wants_fsdp |= "fsdp" in flat
        if (
            axes is None
            or any(a in used for a in flat)
            or _axis_size(mesh, axes) == 1
            or dim % _axis_size(mesh, axes)
        ):
            spec.append(None)
            continue
        used.update(flat)
        spec.append(axes)
    if wants_fsdp and "fsdp" not in used and mesh.shape["fsdp"] > 1:
        _fsdp_fallback(spec, logical_axes, shape, mesh)
    return PartitionSpec(*spec)


def _flat(axes) -> tuple[str, ...]:
    return (axes,) if isinstance(axes, str) else tuple(axes or ())


# Never split over fsdp as a fallback: scanned layer stacks (scan slices them one per step)
# and the short kernel/head dimensions.
_NO_FSDP_FALLBACK = ("layers", "conv_width", "conv_freq", "head_dim")


def _fsdp_fallback(spec: list, logical_axes, shape, mesh: Mesh) -> None:
    """Put "fsdp" on the largest dimension it divides (with what that dimension already has)."""
    best = None
    for i, (name, dim) in enumerate(zip(logical_axes, shape)):
        if name in _NO_FSDP_FALLBACK:
            continue
        axes = _flat(spec[i]) + ("fsdp",)
        if dim % _axis_size(mesh, axes) == 0 and (best is None or dim > shape[best[0]]):
            best = (i, axes)
    if best is not None:
        i, axes = best
        spec[i] = axes if len(axes) > 1 else axes[0]


def shardings_of(boxed_tree, mesh: Mesh):
    """NamedShardings for a tree that may hold `nn.LogicallyPartitioned` boxes.

    Leaves without logical names (step counters, optimizer scalars, rng keys) are replicated.
    Works on abstract trees (`jax.eval_shape` output) as well as concrete ones.
    """

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            value = leaf.value
            return NamedSharding(mesh, logical_to_spec(leaf.names, value.shape, mesh))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def constrain_batch(x: jax.Array) -> jax.Array:
    """`x` with its leading (batch) dimension split over ("data", "fsdp") of the mesh in
    context (`jax.set_mesh`), as the batch arrives. Without it the compiler may keep the
    activations of a scanned transformer whole on every device (the repr_24k train step on 16
    v5e chips held the full global batch's activations per chip: benchmarks/RESULTS.md).
    Unchanged without a mesh, on one batch shard, or when the batch does not divide."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    shards = batch_shards(mesh)
    if shards == 1 or x.ndim == 0 or x.shape[0] % shards:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(BATCH_AXES))


def batch_shards(mesh) -> int:
    """Into how many parts the batch axes ("data", "fsdp") of `mesh` split a batch."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def local_batch_shards(mesh: Mesh) -> int:
    """The batch parts one process holds: a multiple of which its eval batches have rows."""
    return max(1, batch_shards(mesh) // jax.process_count())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Numeric arrays of this process's batch -> global jax Arrays split over the batch axes.

    Strings and object arrays (text, ids) stay on the host.
    """
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "OUS":
            out[key] = value
            continue
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
    return out


def to_host(tree):
    """Device values -> numpy on every process (gathers the shards other processes hold)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


# ---- train states on a mesh ----------------------------------------------------------
def state_layout(make_boxed_state: Callable[[], dict], mesh) -> tuple[dict, dict]:
    """(abstract state, shardings) from tracing alone: nothing is computed or compiled.

    `make_boxed_state` returns the state with `nn.LogicallyPartitioned` parameter boxes; the
    boxes decide the shardings and are stripped from the abstract state.
    """
    abstract_boxed = jax.eval_shape(make_boxed_state)
    shardings = shardings_of(abstract_boxed, mesh)
    return nn.unbox(abstract_boxed), shardings


def mesh_context(mesh):
    """`jax.set_mesh` for a concrete mesh, `use_abstract_mesh` for an AbstractMesh (tracing and
    lowering only)."""
    if isinstance(mesh, AbstractMesh):
        return jax.sharding.use_abstract_mesh(mesh)
    return jax.set_mesh(mesh)


def is_abstract(mesh) -> bool:
    return isinstance(mesh, AbstractMesh)


def sharded_init(make_boxed_state: Callable[[], dict], mesh, shardings) -> dict:
    """Builds the state directly on its shardings (no device ever holds all of it)."""
    init = jax.jit(lambda: nn.unbox(make_boxed_state()), out_shardings=shardings)
    with jax.set_mesh(mesh):
        return init()


def abstract_like(state_shardings, abstract_state):
    """ShapeDtypeStructs carrying the target shardings, for restoring onto a mesh."""
    return jax.tree.map(
        lambda s, a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        state_shardings,
        abstract_state,
    )
