"""What every stage's config shares: the data, mesh, train and optimizer groups, the checks
that run before any compute, and --print_config.

Each stage's own defaults and checks live in its folder (f3_jax/stages/<stage>/config.py) and
start from these groups; config files in `configs/` start from a stage's defaults and override
what differs. Every field is documented where its default is set, by a trailing comment or
comment lines above it: `--print_config` prints those comments (f3_jax/config_docs.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import numbers
import os
from collections.abc import Callable, Sequence

import ml_collections

from f3_jax import config_docs
from f3_jax.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the field."""


# Rematerialization policies of the *.remat keys (f3_jax.models.llm_layers.REMAT_POLICIES):
# "none" keeps every activation for the backward pass; "full" keeps each block's input only and
# recomputes the block; "dots_saveable" keeps the products with weights (matmuls without batch
# dimensions, convolutions) and recomputes the rest.
REMAT_POLICIES = ("none", "full", "dots_saveable")
DTYPES = ("float32", "bfloat16")


def data_defaults() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # "array_record" (prepare / demo_corpus output), "tfds" or "webdataset" (.tar shards read as
    # they are); the names are the entries of f3_jax/data/registry.py.
    d.source = "array_record"
    # array_record: directory written by f3_jax.data.prepare or .demo_corpus. webdataset: .tar
    # shards, local or gs:// (brace pattern, glob, comma list or folder; {split} is replaced).
    d.path = "data/demo_corpus"
    d.build_demo_if_missing = False  # demo configs: build the demo corpus at data.path if absent
    d.demo_minutes = 30.0  # size of the demo corpus built on first use
    d.tfds_name = ""  # data.source="tfds": the TFDS dataset name
    d.tfds_data_dir = ""  # data.source="tfds": its data_dir (ArrayRecord files)
    d.train_split = "train"  # the split training reads (and stage-2 probes are fit on)
    d.eval_split = "valid"  # the split validation reads (eval: the default of --split)
    d.crop_seconds = 1.0  # length of each training example
    # "random": a random crop_seconds window of each clip (stage 1). "utterance": each clip from
    # its start, padded to crop_seconds; a clip cut short loses its transcript (stages 2, 3).
    d.crop_mode = "random"
    d.min_crop_fraction = 0.0  # crops shorter than this fraction of crop_seconds are dropped
    d.gain_db = (0.0, 0.0)  # random gain range in dB; (0, 0) disables the augmentation
    d.num_workers = 0  # Grain worker processes (0: in-process)
    d.read_threads = 4  # Grain threads reading records
    d.prefetch_buffer = 2  # Grain's read-ahead buffer, in batches
    d.shuffle_buffer = 8  # webdataset: samples each row of a global batch holds to shuffle
    # Train batches put on the devices ahead of their step (f3_jax/prefetch.py); 0: none.
    d.device_prefetch = 2
    d.eval_max_seconds = 8.0  # longer eval utterances are cut to this
    d.eval_bucket_seconds = (2.0, 4.0, 8.0)  # eval batches are padded to one of these
    d.eval_batch_size = 8  # global validation batch
    d.eval_max_examples = 64  # validation reads the first this many utterances of the split
    # Stages 2 and 3: "" trains from raw audio; a directory trains from precomputed latents at
    # <latent_cache>/<sha256[:16] of the autoencoder export's weights>/<split>/, built by
    # `python -m f3_jax.latent_cache`. Validation always runs from raw audio.
    d.latent_cache = ""
    return d


def mesh_defaults() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.data = -1  # data-parallel devices; -1: all devices left over by the other axes
    m.fsdp = 1  # devices the parameters and optimizer state are split over (and the batch)
    m.tensor = 1  # devices wide layers (heads, MLP, vocabulary) are split over
    return m


def train_defaults() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.steps = 100_000  # optimizer steps of the whole run
    t.batch_size = 32  # global batch (over every process and device)
    t.checkpoint_every = 5000  # steps between checkpoints (and exports)
    t.keep_checkpoints = 3  # the newest this many checkpoints are kept
    t.log_every = 100  # steps between progress lines and logged training scalars
    t.eval_every = 5000  # steps between validations
    t.sample_every = 5000  # steps between audio samples, spectrograms, transcriptions
    t.eval_at_start = False  # validate the initial state too (a "before training" baseline)
    # An unreadable newest checkpoint: warn and resume from the previous one (False: stop).
    t.restore_fallback = True
    return t


def adamw_defaults() -> ml_collections.ConfigDict:
    """AdamW with warmup and cosine decay: the optimizer of the transformer stages (2, 3)."""
    o = ml_collections.ConfigDict()
    o.lr = 3e-4  # peak learning rate
    o.b1 = 0.9  # Adam's first-moment decay
    o.b2 = 0.98  # Adam's second-moment decay
    o.weight_decay = 0.01  # decoupled weight decay (AdamW)
    o.grad_clip = 1.0  # global gradient norm clipped to this
    o.warmup_steps = 2000  # linear warmup from 0 to the peak
    o.schedule = "cosine"  # after warmup: "cosine" (to zero at train.steps) or "constant"
    return o


def frozen_precision(group: ml_collections.ConfigDict) -> None:
    """Precision of a frozen earlier stage run inside this stage's steps (no gradients for its
    weights, which stay outside the optimizer)."""
    # Its compute dtype: "" = as trained (its export's compute_dtype), "float32" or "bfloat16".
    group.dtype = ""
    group.param_dtype = "float32"  # storage dtype of its weights ("bfloat16" halves them)


def describe(config: ml_collections.ConfigDict, doc_sources: Sequence[tuple]) -> str:
    """Every field of a resolved config with its value and meaning (--print_config)."""
    return config_docs.describe(config, config_docs.field_docs(doc_sources))


SHARED_DOC_SOURCES = ((data_defaults, "data"), (mesh_defaults, "mesh"))


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"optim.lr": 1e-3, ...} from a nested dict (a config as JSON)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_unknown_keys(config, schema, prefix: str = "") -> None:
    for key in config.keys():
        name = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"unknown config key config.{name}")
        value, ref = config[key], schema[key]
        if isinstance(ref, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config.{name} must be a group of fields, got {value!r}")
            _check_unknown_keys(value, ref, name + ".")


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with a -1 entry filled by the devices left over."""
    shape = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
    names = ["mesh.data", "mesh.fsdp", "mesh.tensor"]
    if shape.count(-1) > 1:
        raise ConfigError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    for n, s in zip(names, shape):
        if s != -1 and s < 1:
            raise ConfigError(f"config.{n}={s} must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
        bad = ", ".join(f"{n}={s}" for n, s in zip(names, shape))
        raise ConfigError(f"mesh ({bad}) does not divide the {num_devices} devices")
    if -1 in shape:
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        bad = ", ".join(f"{n}={s}" for n, s in zip(names, shape))
        raise ConfigError(f"mesh ({bad}) uses {math.prod(shape)} devices, not all {num_devices}")
    return tuple(shape)


# ---- numeric fields: one (field, rule) table per stage -------------------------------------------
# Every number a run reads is checked here before compute: a NaN learning rate or a negative loss
# weight would otherwise train for a while and fail far from its cause (in a histogram, a NaN
# loss). Each stage's rows sit in one table so that the stage can take them to its own folder.


@dataclasses.dataclass(frozen=True)
class Rule:
    """A predicate on a finite number, and how the error message says it."""

    holds: Callable[[float], bool]
    says: str


POSITIVE = Rule(lambda v: v > 0, "> 0")
NON_NEGATIVE = Rule(lambda v: v >= 0, ">= 0")
AT_LEAST_ONE = Rule(lambda v: v >= 1, "at least 1")
FRACTION = Rule(lambda v: 0 <= v < 1, "in [0, 1)")  # decays, momenta, Adam betas
PROBABILITY = Rule(lambda v: 0 <= v <= 1, "in [0, 1]")
FINITE = Rule(lambda v: True, "finite")

_COUNTERS = tuple(
    (f"train.{name}", AT_LEAST_ONE)
    for name in (
        "steps",
        "batch_size",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "eval_every",
        "sample_every",
    )
)
_ADAMW = (
    ("optim.b1", FRACTION),
    ("optim.b2", FRACTION),
    ("optim.weight_decay", NON_NEGATIVE),
    ("optim.grad_clip", POSITIVE),
    ("optim.warmup_steps", NON_NEGATIVE),
)

SHARED_NUMBER_RULES: tuple[tuple[str, Rule], ...] = (
    _COUNTERS
    + _ADAMW
    + (
        ("sample_rate", POSITIVE),
        ("data.crop_seconds", POSITIVE),
        ("data.min_crop_fraction", PROBABILITY),
        ("data.gain_db", FINITE),
        ("data.demo_minutes", POSITIVE),
        ("data.device_prefetch", NON_NEGATIVE),
        ("data.eval_max_seconds", POSITIVE),
        ("data.eval_bucket_seconds", POSITIVE),
    )
)
SHARED_ENUM_RULES: tuple[tuple[str, tuple], ...] = (
    ("compute_dtype", DTYPES),
    ("data.crop_mode", ("random", "utterance")),
    ("optim.schedule", ("constant", "cosine")),
)


def field(config, name: str):
    """The value of a dotted field ("optim.lr")."""
    value = config
    for part in name.split("."):
        value = value[part]
    return value


def _finite_number(value: object) -> bool:
    # bool is an int to Python but never a meaningful value of these fields.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value)


def check_numbers(config, rules: tuple[tuple[str, Rule], ...]) -> None:
    """ConfigError naming the first field (group.name) whose value breaks its rule.

    A tuple field (data.gain_db) is checked entry by entry and named whole.
    """
    for name, rule in rules:
        value = field(config, name)
        entries = value if isinstance(value, (tuple, list)) else (value,)
        if not all(_finite_number(v) for v in entries):
            raise ConfigError(f"config.{name}={value!r} must be a finite number")
        if not all(rule.holds(v) for v in entries):
            raise ConfigError(f"config.{name}={value!r} must be {rule.says}")


def check_enums(config, rules: Sequence[tuple[str, tuple]]) -> None:
    """ConfigError naming the first field whose value is not one of its choices."""
    for name, allowed in rules:
        value = field(config, name)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"config.{name}={value!r}: use one of {choices}")


def check_shared(
    config: ml_collections.ConfigDict,
    num_devices: int,
    schema: ml_collections.ConfigDict,
    number_rules: Sequence[tuple[str, Rule]],
    enum_rules: Sequence[tuple[str, tuple]],
) -> None:
    """The checks of every stage: no unknown key (against `schema`, the stage's defaults), a
    mesh that uses the devices, batches that divide over it, numbers in range, known choices."""
    _check_unknown_keys(config, schema)
    data_par, fsdp, _ = resolve_mesh_shape(config.mesh, num_devices)
    check_numbers(config, tuple(SHARED_NUMBER_RULES) + tuple(number_rules))
    for name in ("train.batch_size", "data.eval_batch_size"):
        if field(config, name) % (data_par * fsdp):
            raise ConfigError(
                f"config.{name}={field(config, name)} does not divide over the data axes "
                f"(mesh.data * mesh.fsdp = {data_par * fsdp})"
            )
    check_enums(config, tuple(SHARED_ENUM_RULES) + tuple(enum_rules))


def sibling_config(this_file: str, name: str) -> ml_collections.ConfigDict:
    """get_config() of the config file `name`.py beside `this_file`: a config built on another
    (configs/ae_demo_25hz.py on configs/ae_demo.py), found by path from any directory."""
    path = os.path.join(os.path.dirname(os.path.abspath(this_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"f3_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
