"""Stage 3's config: the defaults (full size) and the checks of its own fields."""

from __future__ import annotations

import ml_collections

from f3_jax.config import (
    AT_LEAST_ONE,
    DTYPES,
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    REMAT_POLICIES,
    SHARED_DOC_SOURCES,
    ConfigError,
    adamw_defaults,
    data_defaults,
    frozen_precision,
    mesh_defaults,
    train_defaults,
)


def defaults() -> ml_collections.ConfigDict:
    """Stage 3: the patch flow head and stop head on the frozen LLM, full size."""
    c = ml_collections.ConfigDict()
    c.stage = "flow"  # which stage this config trains (f3_jax/stages/<stage>/)
    c.seed = 0  # parameter init, flow noise and data order
    c.sample_rate = 24000  # must equal the autoencoder's
    c.compute_dtype = "float32"  # of the trained heads; "bfloat16" on accelerators

    c.autoencoder = ml_collections.ConfigDict()
    c.autoencoder.workdir = ""  # stage-1 workdir (export/ read); must be stage 2's autoencoder
    frozen_precision(c.autoencoder)
    c.representation = ml_collections.ConfigDict()
    c.representation.workdir = ""  # stage-2 workdir (export/ read)
    frozen_precision(c.representation)  # its encoder, downsampler and adapter

    c.llm = ml_collections.ConfigDict()
    c.llm.path = "smollm2"  # the LLM stage 2's adapter was trained for
    c.llm.dtype = "float32"  # compute dtype of the frozen LLM ("bfloat16" on accelerators)
    c.llm.param_dtype = "float32"  # storage dtype of its frozen weights
    c.llm.instruction = "\nSay it:"  # between the text prompt and the audio
    c.llm.max_text_tokens = 64  # text tokens; longer texts are cut
    c.llm.scan_layers = True  # one nn.scan over its layers (no gradient flows through it here)

    c.flow_head = ml_collections.ConfigDict()
    c.flow_head.width = 1024  # residual MLP width
    c.flow_head.depth = 6  # adaptive-norm residual blocks
    c.flow_head.time_embed_dim = 256  # sinusoidal embedding of the flow time
    c.flow_head.cond_drop_prob = 0.1  # condition dropped in training, for classifier-free guidance
    c.flow_head.stop_hidden = 256  # 0: a linear stop head
    c.flow_head.remat = "none"  # its adaLN blocks: none, full, dots_saveable

    c.flow_loss = ml_collections.ConfigDict()
    c.flow_loss.time_schedule = "uniform"  # flow times in training: "uniform" or "logit_normal"
    c.flow_loss.logit_mean = 0.0  # logit_normal: mean of the logit
    c.flow_loss.logit_std = 1.0  # logit_normal: spread of the logit
    c.flow_loss.stop_weight = 1.0  # weight of the stop head's loss
    c.flow_loss.stop_pos_weight = 1.0  # weight of the "stop here" class (rare: one per clip)

    c.sampling = ml_collections.ConfigDict()
    c.sampling.method = "heun"  # ODE solver of the flow: "heun" or "euler"
    c.sampling.num_steps = 16  # solver steps per patch
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


DOC_SOURCES = (
    *SHARED_DOC_SOURCES,
    (train_defaults, "train"),
    (adamw_defaults, "optim"),
    (frozen_precision, "autoencoder"),
    (frozen_precision, "representation"),
    (defaults, ""),
)

NUMBER_RULES = (
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
)
ENUM_RULES = (
    ("llm.dtype", DTYPES),
    ("llm.param_dtype", DTYPES),
    ("autoencoder.dtype", ("", *DTYPES)),
    ("autoencoder.param_dtype", DTYPES),
    ("representation.dtype", ("", *DTYPES)),
    ("representation.param_dtype", DTYPES),
    ("flow_head.remat", REMAT_POLICIES),
    ("sampling.method", ("euler", "heun")),
    ("flow_loss.time_schedule", ("uniform", "logit_normal")),
)


def check(config: ml_collections.ConfigDict) -> None:
    """What stage 3's fields must agree on; ConfigError naming the field."""
    for group, stage in (("autoencoder", 1), ("representation", 2)):
        if not config[group].workdir:
            raise ConfigError(f"config.{group}.workdir is empty: name the stage-{stage} workdir")
