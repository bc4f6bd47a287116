"""Default configs of each stage and the checks that run before any compute.

Config files in `configs/` start from these defaults and override what differs, so every
field a user or a script may set is declared here once, with its meaning.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import ml_collections

from f3_jax import config_docs
from f3_jax.errors import UserError

STAGES = ("autoencoder", "representation", "flow")


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the field."""


# Rematerialization policies of the *.remat keys (f3_jax.models.llm_layers.REMAT_POLICIES):
# "none" keeps every activation for the backward pass; "full" keeps each block's input only and
# recomputes the block; "dots_saveable" keeps the products with weights (matmuls without batch
# dimensions, convolutions) and recomputes the rest.
REMAT_POLICIES = ("none", "full", "dots_saveable")


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
    d.tfds_name = ""
    d.tfds_data_dir = ""
    d.train_split = "train"
    d.eval_split = "valid"
    d.crop_seconds = 1.0
    # "random": a random crop_seconds window of each clip (stage 1). "utterance": each clip from
    # its start, padded to crop_seconds; a clip cut short loses its transcript (stages 2, 3).
    d.crop_mode = "random"
    d.min_crop_fraction = 0.0  # crops shorter than this fraction of crop_seconds are dropped
    d.gain_db = (0.0, 0.0)  # random gain range in dB; (0, 0) disables the augmentation
    d.num_workers = 0  # Grain worker processes (0: in-process)
    d.read_threads = 4
    d.prefetch_buffer = 2
    d.shuffle_buffer = 8  # webdataset: samples each row of a global batch holds to shuffle
    # Train batches put on the devices ahead of their step (f3_jax/prefetch.py); 0: none.
    d.device_prefetch = 2
    d.eval_max_seconds = 8.0  # longer eval utterances are cut to this
    d.eval_bucket_seconds = (2.0, 4.0, 8.0)  # eval batches are padded to one of these
    d.eval_batch_size = 8
    d.eval_max_examples = 64
    # Stages 2 and 3: "" trains from raw audio; a directory trains from precomputed latents at
    # <latent_cache>/<sha256[:16] of the autoencoder export's weights>/<split>/, built by
    # `python -m f3_jax.latent_cache`. Validation always runs from raw audio.
    d.latent_cache = ""
    return d


def mesh_defaults() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.data = -1  # -1: all devices left over by the other axes
    m.fsdp = 1
    m.tensor = 1
    return m


def autoencoder_defaults() -> ml_collections.ConfigDict:
    """Stage 1: the normalized noisy autoencoder, full 24 kHz size."""
    c = ml_collections.ConfigDict()
    c.stage = "autoencoder"
    c.seed = 0
    c.sample_rate = 24000
    c.compute_dtype = "float32"  # "bfloat16" on accelerators; parameters stay float32

    c.model = ml_collections.ConfigDict()
    c.model.channels = 128  # width of the first encoder block
    c.model.channel_mults = (1, 2, 4, 8, 16)  # len(strides) + 1 entries
    c.model.strides = (2, 4, 6, 10)  # product = hop
    c.model.hop = 480  # samples per latent frame; must equal prod(strides)
    c.model.latent_dim = 64
    c.model.dilations = (1, 3, 9)
    c.model.kernel_size = 7
    c.model.final_tanh = False
    c.model.remat = "none"  # encoder and decoder blocks: none, full, dots_saveable

    c.bottleneck = ml_collections.ConfigDict()
    c.bottleneck.norm = "layer"  # "layer" (per frame over channels), "batch", or "none"
    c.bottleneck.noise = "uniform"  # "uniform" (sigma ~ U[0, noise_max]), "half_normal", "none"
    c.bottleneck.noise_max = 0.5
    c.bottleneck.noise_scale = 0.25  # half-normal scale
    c.bottleneck.batch_norm_momentum = 0.99

    c.discriminator = ml_collections.ConfigDict()
    c.discriminator.use_mpd = True
    c.discriminator.mpd_periods = (2, 3, 5, 7, 11)
    c.discriminator.mpd_channels = 32
    c.discriminator.mpd_max_channels = 1024
    c.discriminator.use_mbstft = True
    c.discriminator.stft_fft_sizes = (2048, 1024, 512)
    c.discriminator.stft_bands = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
    c.discriminator.stft_channels = 32

    c.loss = ml_collections.ConfigDict()
    c.loss.mel_weight = 15.0
    c.loss.mel_window_sizes = (32, 64, 128, 256, 512, 1024, 2048)
    c.loss.mel_bins = (5, 10, 20, 40, 80, 160, 320)
    c.loss.stft_weight = 1.0
    c.loss.stft_fft_sizes = (2048, 1024, 512, 256)
    c.loss.adv_weight = 1.0
    c.loss.feature_weight = 2.0
    c.loss.log_eps = 1e-5

    c.optim = ml_collections.ConfigDict()
    c.optim.gen_lr = 1e-4
    c.optim.disc_lr = 1e-4
    c.optim.b1 = 0.8
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1000.0
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"  # "constant" or "cosine" (after warmup, to zero at train.steps)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 400_000
    c.train.batch_size = 32  # global
    c.train.checkpoint_every = 5000
    c.train.keep_checkpoints = 3
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.sample_every = 5000  # audio samples and spectrogram images
    c.train.adversarial_start = 0  # discriminator off before this global step
    c.train.ema_decay = 0.0  # 0 disables the EMA of the generator
    c.train.eval_at_start = False  # validate the initial state too
    # An unreadable newest checkpoint: warn and resume from the previous one (False: stop).
    c.train.restore_fallback = True

    c.data = data_defaults()
    c.mesh = mesh_defaults()
    return c


def _frozen_precision(group: ml_collections.ConfigDict) -> None:
    """Precision of a frozen earlier stage run inside this stage's steps (no gradients for its
    weights, which stay outside the optimizer)."""
    # Its compute dtype: "" = as trained (its export's compute_dtype), "float32" or "bfloat16".
    group.dtype = ""
    group.param_dtype = "float32"  # storage dtype of its weights ("bfloat16" halves them)


def train_defaults() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.steps = 100_000
    t.batch_size = 32  # global
    t.checkpoint_every = 5000
    t.keep_checkpoints = 3
    t.log_every = 100
    t.eval_every = 5000
    t.sample_every = 5000  # audio samples, spectrograms, transcriptions
    t.eval_at_start = False  # validate the initial state too (a "before training" baseline)
    # An unreadable newest checkpoint: warn and resume from the previous one (False: stop).
    t.restore_fallback = True
    return t


def adamw_defaults() -> ml_collections.ConfigDict:
    """AdamW with warmup and cosine decay: the optimizer of the transformer stages (2, 3)."""
    o = ml_collections.ConfigDict()
    o.lr = 3e-4
    o.b1 = 0.9
    o.b2 = 0.98
    o.weight_decay = 0.01
    o.grad_clip = 1.0
    o.warmup_steps = 2000
    o.schedule = "cosine"  # or "constant" (after warmup)
    return o


def representation_defaults() -> ml_collections.ConfigDict:
    """Stage 2: the representation encoder over frozen stage-1 latents, full size."""
    c = ml_collections.ConfigDict()
    c.stage = "representation"
    c.seed = 0
    c.sample_rate = 24000  # must equal the autoencoder's
    c.compute_dtype = "float32"  # of the trained modules; "bfloat16" on accelerators

    c.autoencoder = ml_collections.ConfigDict()
    c.autoencoder.workdir = ""  # stage-1 workdir; its export/ (weights + config) is read
    _frozen_precision(c.autoencoder)

    c.llm = ml_collections.ConfigDict()
    c.llm.path = "smollm2"  # GGUF file, Hugging Face directory, or "smollm2"
    c.llm.dtype = "float32"  # compute dtype of the frozen LLM ("bfloat16" on accelerators)
    c.llm.param_dtype = "float32"  # storage dtype of its frozen weights
    c.llm.instruction = "\nTranscribe the speech:"  # between the audio and the transcript
    c.llm.max_text_tokens = 64  # transcript tokens (with end of text); longer ones are cut
    # The transcript loss backpropagates through the frozen LLM into the adapter: its layers'
    # activations are kept for that (remat "none") or recomputed.
    c.llm.remat = "none"
    c.llm.scan_layers = True  # one nn.scan over its layers (compiles one layer, not all)

    c.encoder = ml_collections.ConfigDict()
    c.encoder.width = 1024
    c.encoder.depth = 12
    c.encoder.num_heads = 16
    c.encoder.num_kv_heads = 16
    c.encoder.head_dim = 64
    c.encoder.mlp_dim = 4096
    c.encoder.causal = True  # False: bidirectional (then unusable inside generation)
    c.encoder.rope_theta = 10000.0
    c.encoder.norm_eps = 1e-5
    c.encoder.remat = "none"  # its blocks: none, full, dots_saveable
    # One nn.scan over the blocks: parameters at encoder/layers/..., stacked over the blocks
    # (a different parameter tree: checkpoints of per-layer encoders, encoder/layers_0, ...,
    # restore with False only; f3_jax.models.llm.stack_layer_params converts them). Exports
    # record it, so they load either way. Off by default so that existing runs restore.
    c.encoder.scan_layers = False

    c.quantizer = ml_collections.ConfigDict()
    c.quantizer.seed = 1234  # the targets depend on this only
    c.quantizer.num_codebooks = 4
    c.quantizer.codebook_size = 8192
    c.quantizer.code_dim = 16
    c.quantizer.stack_frames = 1  # frames t..t+s-1 concatenated before the projection

    c.rq_mtp = ml_collections.ConfigDict()
    c.rq_mtp.horizons = 4  # heads predicting the tokens of frames t+1 .. t+k

    c.adapter = ml_collections.ConfigDict()
    c.adapter.downsample = 4  # latent frames per LLM position (50 Hz -> 12.5 Hz)
    c.adapter.width = 1024  # downsampled representation width
    c.adapter.hidden = 2048  # adapter MLP hidden width (output: the LLM's embedding width)

    c.loss = ml_collections.ConfigDict()
    c.loss.rq_mtp_weight = 1.0
    c.loss.llm_weight = 1.0

    c.optim = adamw_defaults()

    c.train = train_defaults()

    c.eval = ml_collections.ConfigDict()
    c.eval.num_transcribe = 4  # valid utterances transcribed greedily at each validation
    c.eval.max_new_tokens = 48

    c.data = data_defaults()
    c.data.crop_mode = "utterance"
    c.data.crop_seconds = 10.0
    c.mesh = mesh_defaults()
    return c


def flow_defaults() -> ml_collections.ConfigDict:
    """Stage 3: the patch flow head and stop head on the frozen LLM, full size."""
    c = ml_collections.ConfigDict()
    c.stage = "flow"
    c.seed = 0
    c.sample_rate = 24000
    c.compute_dtype = "float32"

    c.autoencoder = ml_collections.ConfigDict()
    c.autoencoder.workdir = ""  # stage-1 workdir (export/ read); must be stage 2's autoencoder
    _frozen_precision(c.autoencoder)
    c.representation = ml_collections.ConfigDict()
    c.representation.workdir = ""  # stage-2 workdir (export/ read)
    _frozen_precision(c.representation)  # its encoder, downsampler and adapter

    c.llm = ml_collections.ConfigDict()
    c.llm.path = "smollm2"  # the LLM stage 2's adapter was trained for
    c.llm.dtype = "float32"
    c.llm.param_dtype = "float32"
    c.llm.instruction = "\nSay it:"  # between the text prompt and the audio
    c.llm.max_text_tokens = 64
    c.llm.scan_layers = True  # one nn.scan over its layers (no gradient flows through it here)

    c.flow_head = ml_collections.ConfigDict()
    c.flow_head.width = 1024
    c.flow_head.depth = 6
    c.flow_head.time_embed_dim = 256
    c.flow_head.cond_drop_prob = 0.1  # condition dropped in training, for classifier-free guidance
    c.flow_head.stop_hidden = 256  # 0: a linear stop head
    c.flow_head.remat = "none"  # its adaLN blocks: none, full, dots_saveable

    c.flow_loss = ml_collections.ConfigDict()
    c.flow_loss.time_schedule = "uniform"  # or "logit_normal"
    c.flow_loss.logit_mean = 0.0
    c.flow_loss.logit_std = 1.0
    c.flow_loss.stop_weight = 1.0
    c.flow_loss.stop_pos_weight = 1.0

    c.sampling = ml_collections.ConfigDict()
    c.sampling.method = "heun"  # or "euler"
    c.sampling.num_steps = 16
    c.sampling.guidance_scale = 1.0  # a choice of ours (the paper's is unknown); try 1.5-3
    c.sampling.temperature = 1.0  # scale of the initial noise
    c.sampling.max_seconds = 20.0  # length cap of generated audio

    c.optim = adamw_defaults()

    c.train = train_defaults()

    c.eval = ml_collections.ConfigDict()
    c.eval.num_generate = 2  # valid transcripts spoken at each validation (logged as audio)

    c.data = data_defaults()
    c.data.crop_mode = "utterance"
    c.data.crop_seconds = 10.0
    c.mesh = mesh_defaults()
    return c


_DEFAULTS = {
    "autoencoder": autoencoder_defaults,
    "representation": representation_defaults,
    "flow": flow_defaults,
}


def doc_sources(stage: str) -> list[tuple]:
    """(defaults function, group) pairs whose comments document the stage's fields."""
    shared = [(data_defaults, "data"), (mesh_defaults, "mesh")]
    if stage == "autoencoder":
        return shared + [(autoencoder_defaults, "")]
    frozen = [(_frozen_precision, "autoencoder")]
    if stage == "flow":
        frozen.append((_frozen_precision, "representation"))
    root = representation_defaults if stage == "representation" else flow_defaults
    return shared + [(train_defaults, "train"), (adamw_defaults, "optim")] + frozen + [(root, "")]


def describe(config: ml_collections.ConfigDict) -> str:
    """Every field of a resolved config with its value and meaning (--print_config)."""
    return config_docs.describe(config, config_docs.field_docs(doc_sources(config.stage)))


def defaults_for(stage: str) -> ml_collections.ConfigDict:
    if stage not in _DEFAULTS:
        raise ConfigError(f"config.stage={stage!r} is not one of {sorted(_DEFAULTS)}")
    return _DEFAULTS[stage]()


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


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Stops a bad config before any compute, naming the field."""
    if "stage" not in config:
        raise ConfigError("config.stage is missing")
    _check_unknown_keys(config, defaults_for(config.stage))
    data_par, fsdp, _ = resolve_mesh_shape(config.mesh, num_devices)
    _check_numbers(config, _NUMBER_RULES["common"] + _NUMBER_RULES[config.stage])
    t = config.train
    if t.batch_size % (data_par * fsdp):
        raise ConfigError(
            f"config.train.batch_size={t.batch_size} does not divide over the data axes "
            f"(mesh.data * mesh.fsdp = {data_par * fsdp})"
        )
    if config.data.eval_batch_size % (data_par * fsdp):
        raise ConfigError(
            f"config.data.eval_batch_size={config.data.eval_batch_size} does not divide over "
            f"the data axes (mesh.data * mesh.fsdp = {data_par * fsdp})"
        )
    from f3_jax.data import registry as data_registry  # lazy: the data side is not a config import

    if config.data.source not in data_registry.names():
        raise ConfigError(
            f"config.data.source={config.data.source!r}: use one of "
            f"{', '.join(data_registry.names())}"
        )
    if config.compute_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.compute_dtype={config.compute_dtype!r}: float32 or bfloat16")
    if config.data.crop_mode not in ("random", "utterance"):
        raise ConfigError(f"config.data.crop_mode={config.data.crop_mode!r}: random or utterance")
    if config.optim.schedule not in ("constant", "cosine"):
        raise ConfigError(f"config.optim.schedule={config.optim.schedule!r}: constant or cosine")
    for key in _DTYPE_KEYS[config.stage]:
        group, name = key.split(".")
        allowed = ("float32", "bfloat16") + (("",) if name == "dtype" and group != "llm" else ())
        if config[group][name] not in allowed:
            raise ConfigError(
                f"config.{key}={config[group][name]!r}: "
                + " or ".join(repr(a) if not a else a for a in allowed)
            )
    for key in _REMAT_KEYS[config.stage]:
        group, name = key.split(".")
        value = config[group][name]
        if value not in REMAT_POLICIES:
            raise ConfigError(f"config.{key}={value!r}: use one of {', '.join(REMAT_POLICIES)}")
    if config.stage == "autoencoder":
        _validate_autoencoder(config)
    elif config.stage == "representation":
        _validate_representation(config)
    elif config.stage == "flow":
        _validate_flow(config)


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

_NUMBER_RULES: dict[str, tuple[tuple[str, Rule], ...]] = {
    "common": _COUNTERS
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
    ),
    "autoencoder": (
        ("optim.gen_lr", POSITIVE),
        ("optim.disc_lr", POSITIVE),
        ("loss.mel_weight", NON_NEGATIVE),
        ("loss.stft_weight", NON_NEGATIVE),
        ("loss.adv_weight", NON_NEGATIVE),
        ("loss.feature_weight", NON_NEGATIVE),
        ("loss.log_eps", POSITIVE),  # inside logs: 0 gives log(0) on silence
        ("bottleneck.noise_max", NON_NEGATIVE),
        ("bottleneck.noise_scale", NON_NEGATIVE),
        ("bottleneck.batch_norm_momentum", FRACTION),
        ("train.ema_decay", FRACTION),  # 0 disables the EMA
        ("train.adversarial_start", NON_NEGATIVE),
    ),
    "representation": (
        ("optim.lr", POSITIVE),
        ("loss.rq_mtp_weight", NON_NEGATIVE),
        ("loss.llm_weight", NON_NEGATIVE),
        ("encoder.rope_theta", POSITIVE),
        ("encoder.norm_eps", POSITIVE),
        ("quantizer.num_codebooks", AT_LEAST_ONE),
        ("quantizer.codebook_size", AT_LEAST_ONE),
        ("quantizer.code_dim", AT_LEAST_ONE),
        ("quantizer.stack_frames", AT_LEAST_ONE),
        ("rq_mtp.horizons", AT_LEAST_ONE),
        ("adapter.downsample", AT_LEAST_ONE),
        ("llm.max_text_tokens", AT_LEAST_ONE),
    ),
    "flow": (
        ("optim.lr", POSITIVE),
        ("flow_loss.stop_weight", NON_NEGATIVE),
        ("flow_loss.stop_pos_weight", NON_NEGATIVE),
        ("flow_loss.logit_mean", FINITE),
        ("flow_loss.logit_std", POSITIVE),
        ("flow_head.cond_drop_prob", PROBABILITY),
        ("sampling.num_steps", AT_LEAST_ONE),
        ("sampling.guidance_scale", NON_NEGATIVE),
        ("sampling.temperature", NON_NEGATIVE),  # 0: the flow from the zero patch
        ("sampling.max_seconds", POSITIVE),
        ("llm.max_text_tokens", AT_LEAST_ONE),
    ),
}


def _finite_number(value: object) -> bool:
    # bool is an int to Python but never a meaningful value of these fields.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value)


def _check_numbers(config, rules: tuple[tuple[str, Rule], ...]) -> None:
    """ConfigError naming the first field (group.name) whose value breaks its rule.

    A tuple field (data.gain_db) is checked entry by entry and named whole.
    """
    for field, rule in rules:
        value = config
        for part in field.split("."):
            value = value[part]
        entries = value if isinstance(value, (tuple, list)) else (value,)
        if not all(_finite_number(v) for v in entries):
            raise ConfigError(f"config.{field}={value!r} must be a finite number")
        if not all(rule.holds(v) for v in entries):
            raise ConfigError(f"config.{field}={value!r} must be {rule.says}")


_DTYPE_KEYS = {
    "autoencoder": (),
    "representation": (
        "llm.dtype",
        "llm.param_dtype",
        "autoencoder.dtype",
        "autoencoder.param_dtype",
    ),
    "flow": (
        "llm.dtype",
        "llm.param_dtype",
        "autoencoder.dtype",
        "autoencoder.param_dtype",
        "representation.dtype",
        "representation.param_dtype",
    ),
}
_REMAT_KEYS = {
    "autoencoder": ("model.remat",),
    "representation": ("encoder.remat", "llm.remat"),
    "flow": ("flow_head.remat",),
}


def _validate_autoencoder(config) -> None:
    m, b = config.model, config.bottleneck
    if math.prod(m.strides) != m.hop:
        raise ConfigError(
            f"config.model.hop={m.hop} does not match the strides {tuple(m.strides)} "
            f"(product {math.prod(m.strides)})"
        )
    if len(m.channel_mults) != len(m.strides) + 1:
        raise ConfigError(
            f"config.model.channel_mults needs len(strides)+1={len(m.strides) + 1} entries, "
            f"got {len(m.channel_mults)}"
        )
    if b.norm not in ("layer", "batch", "none"):
        raise ConfigError(f"config.bottleneck.norm={b.norm!r}: use layer, batch or none")
    if b.noise not in ("uniform", "half_normal", "none"):
        raise ConfigError(f"config.bottleneck.noise={b.noise!r}: use uniform, half_normal or none")
    crop = round(config.data.crop_seconds * config.sample_rate)
    if crop % m.hop:
        raise ConfigError(
            f"config.data.crop_seconds={config.data.crop_seconds} gives {crop} samples, "
            f"not a multiple of the hop {m.hop}"
        )


def _validate_representation(config) -> None:
    if not config.autoencoder.workdir:
        raise ConfigError(
            "config.autoencoder.workdir is empty: name the stage-1 workdir "
            "(--config.autoencoder.workdir=runs/ae_demo)"
        )
    e = config.encoder
    if e.num_heads % e.num_kv_heads:
        raise ConfigError(
            f"config.encoder.num_heads={e.num_heads} is not a multiple of "
            f"config.encoder.num_kv_heads={e.num_kv_heads}"
        )
    if e.head_dim % 2:
        raise ConfigError(f"config.encoder.head_dim={e.head_dim} must be even (rotary pairs)")


def _validate_flow(config) -> None:
    for group in ("autoencoder", "representation"):
        if not config[group].workdir:
            raise ConfigError(
                f"config.{group}.workdir is empty: name the stage-"
                f"{1 if group == 'autoencoder' else 2} workdir"
            )
    sp, fl = config.sampling, config.flow_loss
    if sp.method not in ("euler", "heun"):
        raise ConfigError(f"config.sampling.method={sp.method!r}: euler or heun")
    if fl.time_schedule not in ("uniform", "logit_normal"):
        raise ConfigError(
            f"config.flow_loss.time_schedule={fl.time_schedule!r}: uniform or logit_normal"
        )
