"""Per-device memory of a training run on a mesh of any size, planned without its devices.

    python benchmarks/memory_plan.py --config configs/ae_24k.py --mesh data=2,fsdp=8,tensor=1
    python benchmarks/memory_plan.py --config configs/ae_24k.py --devices 64       # fsdp=64
    python benchmarks/memory_plan.py --config configs/ae_24k.py --sweep 1,2,4,8,16,32,64,128,256
    python benchmarks/memory_plan.py --config configs/repr_24k.py --sweep 1,2,4,8,16,32,64,128,256
    python benchmarks/memory_plan.py --config configs/flow_24k.py --devices 64 \
        [--ae_config configs/ae_24k.py --repr_config configs/repr_24k.py]

State: the stage's trainer (`f3_jax.stages.create_trainer`) is built on an AbstractMesh
of the requested shape, which needs no devices. Stages 2 and 3 are built with abstract frozen
weights (ShapeDtypeStructs: nothing is read but the LLM's header and tokenizer): an earlier
stage whose export is missing is stood in for by its config (--ae_config, --repr_config; by
default the sibling config of --config, configs/repr_24k.py -> configs/ae_24k.py). The trained
state is counted in the main table; the frozen weights a stage-2/3 trainer holds outside its
state (LLM, autoencoder, stage-2 modules, placed by their logical axes too) get a table of
their own. Every leaf keeps the logical
axis names its parameter was created with (`nn.LogicallyPartitioned`, from the trainer's
`logical_state()`); they map to mesh axes through `f3_jax.parallel.logical_to_spec` (the same
function that shards the real run, which drops a mesh axis that does not divide its
dimension), and a leaf's per-device shard is its shape with each dimension divided by the
product of the mesh axes it is split over. Bytes are reported per sub-tree (gen/params,
gen/opt, gen/ema, disc/params, ..., frozen/llm).

Activations: the real train step (the trainer's `lower_train_step`, for stage 1 generator and
discriminator updates in one program, for stage 2 the variant with the LLM term; frozen weights
abstract) is compiled on ONE CPU device at the per-device batch (global batch / (data * fsdp)),
and XLA's `memory_analysis()` of it is printed. This is
a measurement on CPU, not on the accelerator: XLA:CPU assigns buffers differently, the
all-gathered FSDP weights and collective buffers of the sharded program are not in it, and a
tensor axis > 1 would split activations further. Take it as the order of magnitude of the
temporaries, not as a bound.
--nolower_on_abstract_mesh skips the check that the step lowers
(StableHLO, no devices needed) on the abstract mesh itself.

--sweep prints a Markdown table of per-device state bytes against fsdp (data = tensor = 1),
with the ideal total/fsdp beside it and the bytes that stay replicated because their
dimension does not divide by fsdp.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import AbstractMesh, AxisType
from ml_collections import config_flags

from f3_jax import config as config_lib
from f3_jax import parallel, stages


def define_flags():
    """The command line's flags (defined when run as a program, so that tests can import it)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
    flags.DEFINE_string(
        "mesh",
        None,
        "Mesh shape as data=D,fsdp=F,tensor=T (axes left out are 1; one may be -1 "
        "when --devices is given).",
    )
    flags.DEFINE_integer(
        "devices", None, "Number of devices; without --mesh, shorthand for data=1,fsdp=N,tensor=1."
    )
    flags.DEFINE_list(
        "sweep", None, "fsdp sizes: print per-device state bytes vs fsdp (data = tensor = 1)."
    )
    flags.DEFINE_bool(
        "activations",
        True,
        "Compile the train step on one CPU device at the per-device batch and "
        "print its memory analysis (minutes for full-size configs).",
    )
    flags.DEFINE_bool(
        "lower_on_abstract_mesh", True, "Lower the train step on the abstract mesh (no devices)."
    )
    flags.DEFINE_string(
        "lowering_platform", "tpu", "Platform the abstract-mesh lowering targets (tpu, cuda, cpu)."
    )
    flags.DEFINE_integer("top", 8, "How many of the largest replicated leaves to list.")
    config_flags.DEFINE_config_file(
        "ae_config", None, "Stage-1 config standing in for a missing autoencoder export."
    )
    config_flags.DEFINE_config_file(
        "repr_config", None, "Stage-2 config standing in for a missing representation export."
    )
    return flags.FLAGS


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
        if self.path[0] == "frozen":  # frozen/llm, frozen/autoencoder, frozen/representation
            return "/".join(self.path[:2])
        if self.path[0] not in _KINDS and len(self.path) > 2 and self.path[1] in _KINDS:
            return "/".join(self.path[:2])  # a model's own sub-tree: gen/params, disc/opt
        return self.path[0]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def abstract_mesh(shape: tuple[int, int, int]) -> AbstractMesh:
    return AbstractMesh(shape, parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def sibling_config(config_path: str, prefix: str) -> str:
    """configs/flow_24k.py, "ae" -> configs/ae_24k.py (the same size of an earlier stage)."""
    directory, name = os.path.split(config_path)
    size = name.split("_", 1)[1] if "_" in name else name
    return os.path.join(directory, f"{prefix}_{size}")


def _config_file(path: str):
    spec = importlib.util.spec_from_file_location("_memory_plan_stand_in", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def stand_ins(config, config_path: str | None, given: dict | None = None) -> dict:
    """Configs of the earlier stages whose exports are missing (stages 2, 3): from `given`
    ({"autoencoder": ..., "representation": ...}), else the sibling config files."""
    out = {}
    wanted = {"representation": ("autoencoder",), "flow": ("autoencoder", "representation")}
    for group in wanted.get(config.stage, ()):
        workdir = config[group].workdir
        if workdir and (
            os.path.exists(os.path.join(workdir, "weights.safetensors"))
            or os.path.exists(os.path.join(workdir, "export", "config.json"))
        ):
            continue  # the export exists: its config is read (weights stay abstract)
        chosen = (given or {}).get(group)
        if chosen is None:
            prefix = "ae" if group == "autoencoder" else "repr"
            path = sibling_config(config_path or "", prefix)
            if not config_path or not os.path.exists(path):
                raise SystemExit(
                    f"memory_plan: config.{group}.workdir={workdir!r} has no export; pass "
                    f"--{prefix}_config (a stage config standing in for it)"
                )
            chosen = _config_file(path)
            print(f"note: no {group} export at {workdir!r}; standing in with {path}")
        out[group] = chosen
    return out


def build_trainer(config, mesh, stand_in: dict, abstract_frozen: bool = True):
    """The stage's trainer on `mesh` (an AbstractMesh: no devices), frozen weights abstract."""
    try:
        return stages.create_trainer(
            config, mesh, abstract_frozen=abstract_frozen, stand_ins=stand_in
        )
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


def _leaves_of(boxed, prefix: tuple[str, ...] = ()) -> list[Leaf]:
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]:
        names = tuple(leaf.names) if is_box(leaf) else None
        value = leaf.value if is_box(leaf) else leaf
        key = prefix + tuple(_key_name(k) for k in path)
        leaves.append(Leaf(key, tuple(value.shape), np.dtype(value.dtype), names))
    return leaves


def state_leaves(trainer) -> list[Leaf]:
    """Every leaf of the trainer's state with its logical axis names (tracing only)."""
    return _leaves_of(trainer.logical_state())


def frozen_leaves(trainer) -> list[Leaf]:
    """The frozen weights a stage-2/3 trainer holds outside its state, with the logical axis
    names that place them (`trainer.frozen_logical`), in their stored dtypes."""
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)

    def stored(box, x):
        shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return box.replace_boxed(shape) if is_box(box) else shape

    logical, out = trainer.frozen_logical(), []
    for part, tree in trainer.frozen_weights().items():
        boxed = jax.tree.map(stored, logical[part], tree, is_leaf=is_box)
        out += _leaves_of(boxed, ("frozen", part))
    return out


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


# ---- the step: lowered by the trainer from shapes ---------------------------------------------
def example_batch(config, batch_size: int, mesh) -> dict:
    """ShapeDtypeStructs of one global train batch, sharded like the real one."""
    length = round(config.data.crop_seconds * config.sample_rate)
    shapes = {
        "audio": ((batch_size, length), jnp.float32),
        "mask": ((batch_size, length), jnp.float32),
    }
    if config.stage in ("representation", "flow"):  # transcripts tokenized for the LLM
        tokens = config.llm.max_text_tokens
        shapes["text_ids"] = ((batch_size, tokens), jnp.int32)
        shapes["text_mask"] = ((batch_size, tokens), jnp.float32)
    return {
        k: jax.ShapeDtypeStruct(s, d, sharding=parallel.batch_sharding(mesh, len(s)))
        for k, (s, d) in shapes.items()
    }


def planned_step(config) -> int:
    """The global step whose program is measured: the largest one (GAN terms on, if any)."""
    return int(config.train.get("adversarial_start", 0))


def lower_on_abstract_mesh(trainer, config, platform: str) -> tuple[float, int]:
    """Lowers the train step for the trainer's (abstract) mesh; (seconds, StableHLO bytes)."""
    batch = example_batch(config, config.train.batch_size, trainer.mesh)
    t = time.perf_counter()
    lowered = trainer.lower_train_step(batch, planned_step(config), lowering_platforms=(platform,))
    return time.perf_counter() - t, len(lowered.as_text())


def measure_step_on_cpu(config, per_device_batch: int, stand_in: dict):
    """memory_analysis() of the train step compiled on one CPU device at the per-device batch."""
    c = config.copy_and_resolve_references()
    c.train.batch_size = per_device_batch
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    mesh = one_cpu_mesh()
    trainer = build_trainer(c, mesh, stand_in)
    t = time.perf_counter()
    lowered = trainer.lower_train_step(example_batch(c, per_device_batch, mesh), planned_step(c))
    compiled = lowered.compile()
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


def print_activations(config, shape, stand_in: dict) -> None:
    data, fsdp, _ = shape
    global_batch = config.train.batch_size
    if global_batch % (data * fsdp):
        print(
            f"\nactivations: skipped, the global batch {global_batch} does not divide over "
            f"data*fsdp = {data * fsdp}"
        )
        return
    b = global_batch // (data * fsdp)
    print(
        f"\nactivations: the train step (step {planned_step(config)}) compiled on ONE CPU "
        f"device at the per-device batch {b} (= {global_batch} / (data {data} * fsdp {fsdp})), "
        f"{config.compute_dtype}; measured on CPU, not on the accelerator ...",
        flush=True,
    )
    stats, seconds = measure_step_on_cpu(config, b, stand_in)
    args, out = stats.argument_size_in_bytes, stats.output_size_in_bytes
    alias, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
    print(f"  compiled in {seconds:.0f} s (XLA:CPU memory_analysis)")
    print(f"  temporaries (activations, gradients, workspace)  {fmt(temp):>14}")
    print(f"  arguments (unsharded state + frozen + batch)     {fmt(args):>14}")
    print(f"  outputs not aliased to donated arguments         {fmt(out - alias):>14}")
    print(
        f"  => per-device estimate: sharded state above + {fmt(temp)} temporaries "
        f"+ the batch; FSDP all-gather buffers come on top"
    )


def run_single(config, shape, config_path: str | None, options) -> None:
    """options: the parsed flags (top, lower_on_abstract_mesh, lowering_platform, activations,
    ae_config, repr_config)."""
    n = math.prod(shape)
    try:
        stages.check_config(config, n)
    except config_lib.ConfigError as e:
        print(f"note: the config does not validate on this mesh: {e}")
    t = time.perf_counter()
    stand_in = stand_ins(config, config_path, _given(options))
    mesh = abstract_mesh(shape)
    trainer = build_trainer(config, mesh, stand_in)
    leaves = state_leaves(trainer)
    check_against_trainer(trainer, leaves, mesh)
    print(
        f"config: stage {config.stage}, global batch {config.train.batch_size}, "
        f"{config.compute_dtype}; trainer {type(trainer).__name__} on "
        f"{type(trainer.mesh).__name__} {dict(trainer.mesh.shape)} "
        f"({time.perf_counter() - t:.1f} s, no devices used)"
    )
    print_plan(plan(leaves, mesh), leaves, options.top)
    frozen = frozen_leaves(trainer)
    if frozen:
        print("\nfrozen weights (outside the trained state):")
        print_plan(plan(frozen, mesh), frozen, options.top)
    if options.lower_on_abstract_mesh:
        seconds, size = lower_on_abstract_mesh(trainer, config, options.lowering_platform)
        print(
            f"\nlowering: the train step lowers on the abstract mesh for "
            f"{options.lowering_platform} in {seconds:.0f} s ({size / 1e6:.1f} MB of StableHLO)"
        )
    if options.activations:
        print_activations(config, shape, stand_in)


def sweep_table(title: str, leaves: list[Leaf], sizes: list[int], top: int = 8) -> None:
    plans = [plan(leaves, abstract_mesh((1, f, 1))) for f in sizes]
    groups = sorted(plans[0].per_group, key=group_order)
    base = plans[0].total_global
    print(f"{title}\n")
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
        for leaf, nbytes in sorted(last.not_divisible, key=lambda x: -x[1])[:top]:
            print(f"  {'/'.join(leaf.path)} {leaf.shape} {leaf.names}: {fmt(nbytes)}")


def run_sweep(config, sizes: list[int], config_path: str | None, options) -> None:
    stand_in = stand_ins(config, config_path, _given(options))
    trainer = build_trainer(config, abstract_mesh((1, sizes[0], 1)), stand_in)
    sweep_table(
        f"Per-device trained state (MiB) vs fsdp; {config.stage}, data = tensor = 1; "
        "from the logical axis specs (no devices).",
        state_leaves(trainer),
        sizes,
        options.top,
    )
    frozen = frozen_leaves(trainer)
    if frozen:
        print()
        sweep_table(
            "Per-device frozen weights (MiB) vs fsdp (LLM and earlier stages, placed by their "
            "logical axes; not in the optimizer).",
            frozen,
            sizes,
            options.top,
        )


def _given(options) -> dict:
    return {"autoencoder": options.ae_config, "representation": options.repr_config}


def main(argv) -> None:
    del argv
    options = flags.FLAGS
    config = options.config
    if config is None:
        raise SystemExit(
            "usage: memory_plan.py --config configs/X.py (--mesh ... | --devices N | --sweep 1,2,4)"
        )
    path = options["config"].config_filename
    if options.sweep:
        run_sweep(config, [int(x) for x in options.sweep], path, options)
    else:
        run_single(config, parse_mesh(options.mesh, options.devices, config), path, options)


if __name__ == "__main__":
    define_flags()
    app.run(main)
