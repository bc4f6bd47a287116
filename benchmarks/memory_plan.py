"""Per-device memory of a training run on a mesh of any size, planned without its devices.

    python benchmarks/memory_plan.py --config configs/ae_24k.py --mesh data=2,fsdp=8,tensor=1
    python benchmarks/memory_plan.py --config configs/ae_24k.py --devices 64       # fsdp=64
    python benchmarks/memory_plan.py --config configs/ae_24k.py --sweep 1,2,4,8,16,32,64,128,256

State: the stage's trainer (`f3_jax.trainers.create`) is built on a `jax.sharding.AbstractMesh`
of the requested shape, which needs no devices (a trainer that cannot be built on one, such as
stage 2 placing its frozen weights, is built on one CPU device instead: the layout read from it
does not depend on the mesh). Only the trained state is counted: weights a trainer holds
outside its state (frozen autoencoder, LLM) are not. Every state leaf keeps the logical axis names
its parameter was created with (`nn.LogicallyPartitioned`); they map to mesh axes through
`f3_jax.parallel.logical_to_spec` (the same function that shards the real run, which drops a
mesh axis that does not divide its dimension), and a leaf's per-device shard is its shape with
each dimension divided by the product of the mesh axes it is split over. Bytes are reported per
sub-tree (gen/params, gen/opt, gen/ema, disc/params, ...).

Activations: the real train step (the trainer's public `train_step`, generator and
discriminator updates traced into one program) is compiled on ONE CPU device at the per-device
batch (global batch / (data * fsdp)), and XLA's `memory_analysis()` of it is printed. This is
a measurement on CPU, not on the accelerator: XLA:CPU assigns buffers differently, the
all-gathered FSDP weights and collective buffers of the sharded program are not in it, and a
tensor axis > 1 would split activations further. Take it as the order of magnitude of the
temporaries, not as a bound. Stages without an entry in example_batch() skip this part.
--nolower_on_abstract_mesh skips the check that the step lowers
(StableHLO, no devices needed) on the abstract mesh itself.

--sweep prints a Markdown table of per-device state bytes against fsdp (data = tensor = 1),
with the ideal total/fsdp beside it and the bytes that stay replicated because their
dimension does not divide by fsdp.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import AbstractMesh, AxisType
from ml_collections import config_flags

from f3_jax import config as config_lib
from f3_jax import parallel, trainers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
_MESH = flags.DEFINE_string(
    "mesh",
    None,
    "Mesh shape as data=D,fsdp=F,tensor=T (axes left out are 1; one may be -1 "
    "when --devices is given).",
)
_DEVICES = flags.DEFINE_integer(
    "devices", None, "Number of devices; without --mesh, shorthand for data=1,fsdp=N,tensor=1."
)
_SWEEP = flags.DEFINE_list(
    "sweep", None, "fsdp sizes: print per-device state bytes vs fsdp (data = tensor = 1)."
)
_ACTIVATIONS = flags.DEFINE_bool(
    "activations",
    True,
    "Compile the train step on one CPU device at the per-device batch and "
    "print its memory analysis (minutes for full-size configs).",
)
_LOWER = flags.DEFINE_bool(
    "lower_on_abstract_mesh", True, "Lower the train step on the abstract mesh (no devices)."
)
_PLATFORM = flags.DEFINE_string(
    "lowering_platform", "tpu", "Platform the abstract-mesh lowering targets (tpu, cuda, cpu)."
)
_TOP = flags.DEFINE_integer("top", 8, "How many of the largest replicated leaves to list.")

MiB = 2**20
_RULES = dict(parallel.RULES)  # logical axis -> mesh axes
_KINDS = ("params", "opt", "ema", "batch_stats")  # the parts of a trained model's state


# ---- the state layout, without devices -------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    names: tuple[str | None, ...] | None  # logical axis names; None: never sharded

    @property
    def group(self) -> str:
        """Sub-tree the leaf is counted in: gen/params, disc/opt, params, opt, ...; counters for
        top-level scalars."""
        if len(self.path) == 1:
            return "counters"
        if self.path[0] not in _KINDS and len(self.path) > 2 and self.path[1] in _KINDS:
            return "/".join(self.path[:2])  # a model's own sub-tree: gen/params, disc/opt
        return self.path[0]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def abstract_mesh(shape: tuple[int, int, int]) -> AbstractMesh:
    return AbstractMesh(shape, parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def build_trainer(config, shape: tuple[int, int, int]):
    """The stage's trainer on an abstract mesh; on one CPU device if the trainer needs one."""
    try:
        return trainers.create(config, abstract_mesh(shape))
    except Exception as abstract_error:  # noqa: BLE001 - retried on a real (1-device) mesh
        print(
            f"note: trainers.create failed on an AbstractMesh ({type(abstract_error).__name__}: "
            f"{abstract_error}); building it on one CPU device instead (the layout read from it "
            "is mesh-independent)"
        )
    try:
        return trainers.create(config, one_cpu_mesh())
    except config_lib.ConfigError as e:
        raise SystemExit(f"memory_plan: the {config.stage} trainer cannot be built: {e}") from e


def one_cpu_mesh():
    return jax.make_mesh(
        (1, 1, 1),
        parallel.MESH_AXES,
        axis_types=(AxisType.Auto,) * 3,
        devices=jax.devices("cpu")[:1],
    )


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def state_leaves(trainer) -> list[Leaf]:
    """Every leaf of the trainer's state with its logical axis names (tracing only)."""
    make_boxed = getattr(trainer, "_boxed_state", None)
    if make_boxed is None:
        raise SystemExit(
            f"{type(trainer).__name__} has no _boxed_state(): memory_plan needs the state with "
            "its nn.LogicallyPartitioned boxes (what trainers.common.state_layout traces)"
        )
    boxed = jax.eval_shape(make_boxed)
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]:
        names = tuple(leaf.names) if is_box(leaf) else None
        value = leaf.value if is_box(leaf) else leaf
        leaves.append(
            Leaf(
                tuple(_key_name(k) for k in path), tuple(value.shape), np.dtype(value.dtype), names
            )
        )
    return leaves


def shard_shape(leaf: Leaf, mesh: AbstractMesh) -> tuple[tuple[int, ...], object]:
    """(per-device shape, PartitionSpec) of one leaf on `mesh`."""
    if leaf.names is None:
        return leaf.shape, jax.sharding.PartitionSpec()
    spec = parallel.logical_to_spec(leaf.names, leaf.shape, mesh)
    out = []
    for dim, axes in zip(leaf.shape, tuple(spec) + (None,) * (len(leaf.shape) - len(spec))):
        flat = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        split = math.prod(mesh.shape[a] for a in flat)
        assert dim % split == 0, (leaf.path, dim, axes)
        out.append(dim // split)
    return tuple(out), spec


def group_order(group: str) -> tuple:
    """params, opt, ema, ... within each model's sub-tree (gen, disc); counters last."""
    top, _, kind = group.partition("/")
    kind = kind or top
    owner = "" if top in _KINDS else top
    rank = _KINDS.index(kind) if kind in _KINDS else len(_KINDS)
    return (group == "counters", owner, rank, group)


def _uses_fsdp(axes) -> bool:
    return axes == "fsdp" or (isinstance(axes, tuple) and "fsdp" in axes)


@dataclasses.dataclass
class Plan:
    mesh: AbstractMesh
    per_group: dict[str, list[int]]  # group -> [global bytes, per-device bytes, leaves]
    not_divisible: list[tuple[Leaf, int]]  # leaves meant for fsdp that stayed whole, bytes/dev
    unsharded_bytes: int  # per-device bytes of leaves no rule maps to fsdp (biases, gains, ...)

    @property
    def total(self) -> int:
        return sum(v[1] for v in self.per_group.values())

    @property
    def total_global(self) -> int:
        return sum(v[0] for v in self.per_group.values())


def plan(leaves: list[Leaf], mesh: AbstractMesh) -> Plan:
    per_group: dict[str, list[int]] = {}
    not_divisible, unsharded = [], 0
    for leaf in leaves:
        local, spec = shard_shape(leaf, mesh)
        nbytes = math.prod(local) * leaf.dtype.itemsize
        g = per_group.setdefault(leaf.group, [0, 0, 0])
        g[0] += leaf.nbytes
        g[1] += nbytes
        g[2] += 1
        fsdp_dims = [i for i, n in enumerate(leaf.names or ()) if _uses_fsdp(_RULES.get(n))]
        if not fsdp_dims:
            unsharded += nbytes
        elif mesh.shape["fsdp"] > 1 and not any(_uses_fsdp(a) for a in tuple(spec)):
            not_divisible.append((leaf, nbytes))
    return Plan(mesh, per_group, not_divisible, unsharded)


def check_against_trainer(trainer, leaves: list[Leaf], mesh: AbstractMesh) -> None:
    """The specs computed here must be the ones the trainer itself uses on this mesh."""
    if not isinstance(trainer.mesh, AbstractMesh):
        return
    theirs = [s.sharding.spec for s in jax.tree.leaves(trainer.abstract_state())]
    ours = [shard_shape(leaf, mesh)[1] for leaf in leaves]
    if len(theirs) != len(ours):
        raise SystemExit(
            f"state layout mismatch: {len(ours)} leaves here, {len(theirs)} in the "
            "trainer's abstract_state()"
        )
    norm = lambda spec: tuple(spec) + (None,) * 8
    bad = [leaf.path for leaf, a, b in zip(leaves, ours, theirs) if norm(a)[:8] != norm(b)[:8]]
    if bad:
        raise SystemExit(
            f"sharding mismatch with the trainer for {len(bad)} leaves, e.g. {'/'.join(bad[0])}"
        )


# ---- the step: traced with the trainer's public train_step -----------------------------------
@contextlib.contextmanager
def traceable_set_mesh():
    """Lets the trainer's `with jax.set_mesh(...)` run inside an outer jit.

    `jax.set_mesh` refuses to run under a trace (and takes no AbstractMesh); inside the traced
    step only the abstract mesh matters, which `jax.sharding.use_abstract_mesh` provides.
    Patched for the duration of one trace only.
    """
    original = jax.set_mesh

    @contextlib.contextmanager
    def abstract_only(mesh):
        with jax.sharding.use_abstract_mesh(getattr(mesh, "abstract_mesh", mesh)):
            yield

    jax.set_mesh = abstract_only
    try:
        yield
    finally:
        jax.set_mesh = original


BATCH_STAGES = ("autoencoder",)  # stages example_batch() knows


def example_batch(config, batch_size: int, mesh) -> dict:
    """ShapeDtypeStructs of one global train batch, sharded like the real one."""
    if config.stage == "autoencoder":
        length = round(config.data.crop_seconds * config.sample_rate)
        shapes = {
            "audio": ((batch_size, length), jnp.float32),
            "mask": ((batch_size, length), jnp.float32),
        }
    else:
        raise SystemExit(
            f"memory_plan: no example batch for stage {config.stage!r}; add one to example_batch()"
        )
    return {
        k: jax.ShapeDtypeStruct(s, d, sharding=parallel.batch_sharding(mesh, len(s)))
        for k, (s, d) in shapes.items()
    }


def planned_step(config) -> int:
    """The global step whose program is measured: the largest one (GAN terms on, if any)."""
    return int(config.train.get("adversarial_start", 0))


def lower_on_abstract_mesh(trainer, config, platform: str) -> tuple[float, int]:
    """Lowers the train step for the trainer's (abstract) mesh; (seconds, StableHLO bytes)."""
    state = trainer.abstract_state()
    batch = example_batch(config, config.train.batch_size, trainer.mesh)
    step = planned_step(config)
    fn = jax.jit(lambda s, b: trainer.train_step(s, b, step), donate_argnums=0)
    t = time.perf_counter()
    with jax.sharding.use_abstract_mesh(trainer.mesh), traceable_set_mesh():
        lowered = fn.trace(state, batch).lower(lowering_platforms=(platform,))
    return time.perf_counter() - t, len(lowered.as_text())


def measure_step_on_cpu(config, per_device_batch: int):
    """memory_analysis() of the train step compiled on one CPU device at the per-device batch."""
    c = config.copy_and_resolve_references()
    c.train.batch_size = per_device_batch
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    mesh = one_cpu_mesh()
    trainer = trainers.create(c, mesh)
    step = planned_step(c)
    fn = jax.jit(lambda s, b: trainer.train_step(s, b, step), donate_argnums=0)
    t = time.perf_counter()
    with jax.set_mesh(mesh), traceable_set_mesh():
        compiled = fn.lower(trainer.abstract_state(), example_batch(c, per_device_batch, mesh))
        compiled = compiled.compile()
    return compiled.memory_analysis(), time.perf_counter() - t


# ---- command line ----------------------------------------------------------------------------
def parse_mesh(text: str | None, devices: int | None, config) -> tuple[int, int, int]:
    if text is None and devices is None:
        cfg = config.mesh
        if -1 in (cfg.data, cfg.fsdp, cfg.tensor):
            raise SystemExit(
                "give --mesh data=..,fsdp=..,tensor=.. or --devices N (the "
                "config's mesh has a -1 axis, which needs a device count)"
            )
        return (cfg.data, cfg.fsdp, cfg.tensor)
    if text is None:
        return (1, devices, 1)
    sizes = dict.fromkeys(parallel.MESH_AXES, 1)
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in sizes:
            raise SystemExit(f"--mesh: unknown axis {name!r}; axes are {parallel.MESH_AXES}")
        sizes[name.strip()] = int(value)
    shape = tuple(sizes[a] for a in parallel.MESH_AXES)
    if -1 in shape or devices is not None:
        cfg = config.copy_and_resolve_references()
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = shape
        try:
            shape = config_lib.resolve_mesh_shape(cfg.mesh, devices or 0)
        except config_lib.ConfigError as e:
            raise SystemExit(f"--mesh {text} with --devices {devices}: {e}") from e
    return shape


def fmt(nbytes: float) -> str:
    return f"{nbytes / MiB:,.2f} MiB"


def print_plan(p: Plan, leaves: list[Leaf], top: int) -> None:
    shape = dict(p.mesh.shape)
    n = math.prod(shape.values())
    print(f"\nstate per device on mesh {shape} ({n} devices), from the logical axis specs:")
    print(f"  {'sub-tree':<18} {'leaves':>6} {'global':>14} {'per device':>14} {'fraction':>9}")
    for group in sorted(p.per_group, key=group_order):
        total, local, count = p.per_group[group]
        frac = local / total if total else 0.0
        print(f"  {group:<18} {count:>6} {fmt(total):>14} {fmt(local):>14} {frac:>9.4f}")
    print(
        f"  {'total':<18} {len(leaves):>6} {fmt(p.total_global):>14} {fmt(p.total):>14} "
        f"{p.total / p.total_global:>9.4f}"
    )
    fsdp, split = shape["fsdp"], shape["fsdp"] * shape["tensor"]
    if split > 1:
        print(
            f"  ideal (global / (fsdp * tensor) = global / {split}): "
            f"{fmt(p.total_global / split)}; never sharded over fsdp by the rules (biases, "
            f"gains, scalars): {fmt(p.unsharded_bytes)} per device"
        )
    if p.not_divisible:
        lost = sum(b for _, b in p.not_divisible)
        print(
            f"  {len(p.not_divisible)} leaves have an fsdp-sharded logical axis that "
            f"fsdp={fsdp} does not divide, so they are not split over fsdp "
            f"({fmt(lost)} per device):"
        )
        for leaf, nbytes in sorted(p.not_divisible, key=lambda x: -x[1])[:top]:
            print(f"    {'/'.join(leaf.path)} {leaf.shape} {leaf.names}: {fmt(nbytes)}")


def print_activations(config, shape) -> None:
    data, fsdp, _ = shape
    global_batch = config.train.batch_size
    if global_batch % (data * fsdp):
        print(
            f"\nactivations: skipped, the global batch {global_batch} does not divide over "
            f"data*fsdp = {data * fsdp}"
        )
        return
    if config.stage not in BATCH_STAGES:
        print(
            f"\nactivations: skipped, no example batch for stage {config.stage!r} (add one to "
            "example_batch() in benchmarks/memory_plan.py)"
        )
        return
    b = global_batch // (data * fsdp)
    print(
        f"\nactivations: the train step (step {planned_step(config)}) compiled on ONE CPU "
        f"device at the per-device batch {b} (= {global_batch} / (data {data} * fsdp {fsdp})), "
        f"{config.compute_dtype}; measured on CPU, not on the accelerator ...",
        flush=True,
    )
    stats, seconds = measure_step_on_cpu(config, b)
    args, out = stats.argument_size_in_bytes, stats.output_size_in_bytes
    alias, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
    print(f"  compiled in {seconds:.0f} s (XLA:CPU memory_analysis)")
    print(f"  temporaries (activations, gradients, workspace)  {fmt(temp):>14}")
    print(f"  arguments (unsharded state + batch)              {fmt(args):>14}")
    print(f"  outputs not aliased to donated arguments         {fmt(out - alias):>14}")
    print(
        f"  => per-device estimate: sharded state above + {fmt(temp)} temporaries "
        f"+ the batch; FSDP all-gather buffers come on top"
    )


def run_single(config, shape) -> None:
    n = math.prod(shape)
    try:
        config_lib.validate(config, n)
    except config_lib.ConfigError as e:
        print(f"note: the config does not validate on this mesh: {e}")
    t = time.perf_counter()
    trainer = build_trainer(config, shape)
    leaves = state_leaves(trainer)
    mesh = abstract_mesh(shape)
    check_against_trainer(trainer, leaves, mesh)
    print(
        f"config: stage {config.stage}, global batch {config.train.batch_size}, "
        f"{config.compute_dtype}; trainer {type(trainer).__name__} on "
        f"{type(trainer.mesh).__name__} {dict(trainer.mesh.shape)} "
        f"({time.perf_counter() - t:.1f} s, "
        f"{'no devices used' if isinstance(trainer.mesh, AbstractMesh) else 'one CPU device'})"
    )
    print_plan(plan(leaves, mesh), leaves, _TOP.value)
    if _LOWER.value and isinstance(trainer.mesh, AbstractMesh):
        seconds, size = lower_on_abstract_mesh(trainer, config, _PLATFORM.value)
        print(
            f"\nlowering: the train step lowers on the abstract mesh for "
            f"{_PLATFORM.value} in {seconds:.0f} s ({size / 1e6:.1f} MB of StableHLO)"
        )
    if _ACTIVATIONS.value:
        print_activations(config, shape)


def run_sweep(config, sizes: list[int]) -> None:
    trainer = build_trainer(config, (1, sizes[0], 1))
    leaves = state_leaves(trainer)
    plans = [plan(leaves, abstract_mesh((1, f, 1))) for f in sizes]
    groups = sorted(plans[0].per_group, key=group_order)
    base = plans[0].total_global
    print(
        f"Per-device state (MiB) vs fsdp; {config.stage}, data = tensor = 1; "
        f"from the logical axis specs (no devices).\n"
    )
    head = ["fsdp", *groups, "total", "ideal total/fsdp", "total / ideal", "whole (not divisible)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for f, p in zip(sizes, plans):
        cells = [str(f)] + [f"{p.per_group[g][1] / MiB:,.2f}" for g in groups]
        lost = sum(b for _, b in p.not_divisible)
        cells += [
            f"{p.total / MiB:,.2f}",
            f"{base / f / MiB:,.2f}",
            f"{p.total / (base / f):.2f}",
            f"{lost / MiB:,.2f} ({len(p.not_divisible)} leaves)",
        ]
        print("| " + " | ".join(cells) + " |")
    last = plans[-1]
    if last.not_divisible:
        print(f"\nAt fsdp={sizes[-1]}, the largest leaves that stay whole:")
        for leaf, nbytes in sorted(last.not_divisible, key=lambda x: -x[1])[: _TOP.value]:
            print(f"  {'/'.join(leaf.path)} {leaf.shape} {leaf.names}: {fmt(nbytes)}")


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    if config is None:
        raise SystemExit(
            "usage: memory_plan.py --config configs/X.py (--mesh ... | --devices N | --sweep 1,2,4)"
        )
    if _SWEEP.value:
        run_sweep(config, [int(x) for x in _SWEEP.value])
    else:
        run_single(config, parse_mesh(_MESH.value, _DEVICES.value, config))


if __name__ == "__main__":
    app.run(main)
