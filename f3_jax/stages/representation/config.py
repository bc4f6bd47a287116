"""Stage 2's config: the defaults (full size) and the checks of its own fields."""

from __future__ import annotations

import ml_collections

from f3_jax.config import (
    AT_LEAST_ONE,
    DTYPES,
    NON_NEGATIVE,
    POSITIVE,
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
    """Stage 2: the representation encoder over frozen stage-1 latents, full size."""
    c = ml_collections.ConfigDict()
    c.stage = "representation"  # which stage this config trains (f3_jax/stages/<stage>/)
    c.seed = 0  # parameter init and data order
    c.sample_rate = 24000  # must equal the autoencoder's
    c.compute_dtype = "float32"  # of the trained modules; "bfloat16" on accelerators

    c.autoencoder = ml_collections.ConfigDict()
    c.autoencoder.workdir = ""  # stage-1 workdir; its export/ (weights + config) is read
    frozen_precision(c.autoencoder)

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
    c.encoder.width = 1024  # the representations' width
    c.encoder.depth = 12  # transformer blocks
    c.encoder.num_heads = 16  # attention heads
    c.encoder.num_kv_heads = 16  # key/value heads (grouped-query attention when fewer)
    c.encoder.head_dim = 64  # width of each head
    c.encoder.mlp_dim = 4096  # SwiGLU hidden width
    c.encoder.causal = True  # False: bidirectional (then unusable inside generation)
    c.encoder.rope_theta = 10000.0  # rotary embedding base
    c.encoder.norm_eps = 1e-5  # RMSNorm epsilon
    c.encoder.remat = "none"  # its blocks: none, full, dots_saveable
    # One nn.scan over the blocks: parameters at encoder/layers/..., stacked over the blocks
    # (a different parameter tree: checkpoints of per-layer encoders, encoder/layers_0, ...,
    # restore with False only; f3_jax.models.llm.stack_layer_params converts them). Exports
    # record it, so they load either way. Off by default so that existing runs restore.
    c.encoder.scan_layers = False

    c.quantizer = ml_collections.ConfigDict()
    c.quantizer.seed = 1234  # the targets depend on this only
    c.quantizer.num_codebooks = 4  # random codebooks, one token each per frame
    c.quantizer.codebook_size = 8192  # codes per codebook
    c.quantizer.code_dim = 16  # dimension of the random projection and the codes
    c.quantizer.stack_frames = 1  # frames t..t+s-1 concatenated before the projection

    c.rq_mtp = ml_collections.ConfigDict()
    c.rq_mtp.horizons = 4  # heads predicting the tokens of frames t+1 .. t+k

    c.adapter = ml_collections.ConfigDict()
    c.adapter.downsample = 4  # latent frames per LLM position (50 Hz -> 12.5 Hz)
    c.adapter.width = 1024  # downsampled representation width
    c.adapter.hidden = 2048  # adapter MLP hidden width (output: the LLM's embedding width)

    c.loss = ml_collections.ConfigDict()
    # Which objectives train the encoder (the paper's ablation): "both" (F3's), "rq_mtp" (no
    # LLM term: the LLM never runs in training) or "llm" (no RQ-MTP term: the heads stay at
    # their initialization).
    c.loss.objectives = "both"
    c.loss.rq_mtp_weight = 1.0  # weight of the RQ-MTP cross-entropy
    c.loss.llm_weight = 1.0  # weight of the transcript cross-entropy through the LLM

    c.optim = adamw_defaults()

    c.train = train_defaults()

    c.eval = ml_collections.ConfigDict()
    c.eval.num_transcribe = 4  # valid utterances transcribed greedily at each validation
    c.eval.max_new_tokens = 48  # length cap of a greedy transcription

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
    (defaults, ""),
)

NUMBER_RULES = (
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
)
OBJECTIVES = ("both", "rq_mtp", "llm")  # loss.objectives
ENUM_RULES = (
    ("loss.objectives", OBJECTIVES),
    ("llm.dtype", DTYPES),
    ("llm.param_dtype", DTYPES),
    ("autoencoder.dtype", ("", *DTYPES)),
    ("autoencoder.param_dtype", DTYPES),
    ("encoder.remat", REMAT_POLICIES),
    ("llm.remat", REMAT_POLICIES),
)


def check(config: ml_collections.ConfigDict) -> None:
    """What stage 2's fields must agree on; ConfigError naming the field."""
    if not config.autoencoder.workdir:
        raise ConfigError(
            "config.autoencoder.workdir is empty: name the stage-1 workdir "
            "(--config.autoencoder.workdir=runs/ae_demo)"
        )
    _check_objectives(config.loss)
    e = config.encoder
    if e.num_heads % e.num_kv_heads:
        raise ConfigError(
            f"config.encoder.num_heads={e.num_heads} is not a multiple of "
            f"config.encoder.num_kv_heads={e.num_kv_heads}"
        )
    if e.head_dim % 2:
        raise ConfigError(f"config.encoder.head_dim={e.head_dim} must be even (rotary pairs)")


def _check_objectives(loss: ml_collections.ConfigDict) -> None:
    """An objective that is on needs a nonzero weight, else nothing trains the encoder."""
    needs = {"both": ("rq_mtp", "llm"), "rq_mtp": ("rq_mtp",), "llm": ("llm",)}
    weights = [f"{name}_weight" for name in needs[loss.objectives]]
    if all(loss[w] == 0 for w in weights):
        zero = " and ".join(f"config.loss.{w}=0" for w in weights)
        raise ConfigError(
            f"{zero} with config.loss.objectives={loss.objectives!r}: no objective trains "
            "the encoder; give the objective a nonzero weight or choose another one"
        )
