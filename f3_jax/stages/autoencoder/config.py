"""Stage 1's config: the defaults (full 24 kHz size) and the checks of its own fields."""

from __future__ import annotations

import math

import ml_collections

from f3_jax.config import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    REMAT_POLICIES,
    SHARED_DOC_SOURCES,
    ConfigError,
    data_defaults,
    mesh_defaults,
    train_defaults,
)
from f3_jax.models.autoencoder import BOTTLENECKS


def defaults() -> ml_collections.ConfigDict:
    """Stage 1: the normalized noisy autoencoder, full 24 kHz size."""
    c = ml_collections.ConfigDict()
    c.stage = "autoencoder"  # which stage this config trains (f3_jax/stages/<stage>/)
    c.seed = 0  # parameter init, noise and data order
    c.sample_rate = 24000  # audio is resampled to this rate
    c.compute_dtype = "float32"  # "bfloat16" on accelerators; parameters stay float32

    c.model = ml_collections.ConfigDict()
    c.model.channels = 128  # width of the first encoder block
    c.model.channel_mults = (1, 2, 4, 8, 16)  # len(strides) + 1 entries
    c.model.strides = (2, 4, 6, 10)  # encoder downsampling per block; product = hop
    c.model.hop = 480  # samples per latent frame; must equal prod(strides)
    c.model.latent_dim = 64  # channels of the latents z
    c.model.dilations = (1, 3, 9)  # dilations of the residual units of each block
    c.model.kernel_size = 7  # kernel width of the residual units
    c.model.final_tanh = False  # squash the decoder's output into [-1, 1]
    c.model.remat = "none"  # encoder and decoder blocks: none, full, dots_saveable

    c.bottleneck = ml_collections.ConfigDict()
    # "f3": normalized and noisy (F3's); "vae": KL-regularized mean and scale (stable-audio-tools'
    # baseline, loss.kl_weight); "plain": a projection only, no normalization, no noise.
    c.bottleneck.kind = "f3"
    c.bottleneck.norm = "layer"  # kind="f3": "layer" (per frame over channels), "batch", "none"
    c.bottleneck.noise = "uniform"  # kind="f3": "uniform" (U[0, noise_max]), "half_normal", "none"
    c.bottleneck.noise_max = 0.5  # the uniform noise level's upper bound
    c.bottleneck.noise_scale = 0.25  # half-normal scale
    c.bottleneck.batch_norm_momentum = 0.99  # norm="batch": momentum of the running statistics
    c.bottleneck.vae_min_std = 1e-4  # kind="vae": floor added to softplus(scale), as theirs

    c.discriminator = ml_collections.ConfigDict()
    c.discriminator.use_mpd = True  # the multi-period waveform discriminator
    c.discriminator.mpd_periods = (2, 3, 5, 7, 11)  # its periods
    c.discriminator.mpd_channels = 32  # its first width
    c.discriminator.mpd_max_channels = 1024  # its widest layer
    c.discriminator.use_mbstft = True  # the multi-band multi-resolution STFT discriminator
    c.discriminator.stft_fft_sizes = (2048, 1024, 512)  # its resolutions
    # Its frequency bands, as fractions of the Nyquist frequency.
    c.discriminator.stft_bands = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
    c.discriminator.stft_channels = 32  # its width

    c.loss = ml_collections.ConfigDict()
    c.loss.mel_weight = 15.0  # weight of the multi-scale mel loss
    c.loss.mel_window_sizes = (32, 64, 128, 256, 512, 1024, 2048)  # its scales (hop = 1/4)
    c.loss.mel_bins = (5, 10, 20, 40, 80, 160, 320)  # mel bands of each scale
    c.loss.stft_weight = 1.0  # weight of the multi-resolution STFT loss
    c.loss.stft_fft_sizes = (2048, 1024, 512, 256)  # its resolutions
    c.loss.adv_weight = 1.0  # weight of the least-squares GAN loss
    c.loss.feature_weight = 2.0  # weight of the discriminator feature-matching loss
    c.loss.log_eps = 1e-5  # inside the logs of the spectral losses
    # kind="vae": weight of the KL term (logged as loss/kl); stable-audio-tools' VAEs use 1e-4.
    c.loss.kl_weight = 1e-4

    c.optim = ml_collections.ConfigDict()
    c.optim.gen_lr = 1e-4  # the generator's learning rate
    c.optim.disc_lr = 1e-4  # the discriminators' learning rate
    c.optim.b1 = 0.8  # Adam's first-moment decay (both)
    c.optim.b2 = 0.99  # Adam's second-moment decay (both)
    c.optim.weight_decay = 0.0  # decoupled weight decay (AdamW)
    c.optim.grad_clip = 1000.0  # global gradient norm clipped to this
    c.optim.warmup_steps = 0  # linear warmup from 0 to the learning rates
    c.optim.schedule = "constant"  # "constant" or "cosine" (after warmup, to zero at train.steps)

    c.train = train_defaults()
    c.train.steps = 400_000
    c.train.adversarial_start = 0  # discriminator off before this global step
    c.train.ema_decay = 0.0  # 0 disables the EMA of the generator
    # On log steps, also the gradient norm of each loss term alone (grad_norm/mel, /stft, ...):
    # one more backward pass per term, and its own compile (20 s for ae_demo on 2 CPU cores).
    c.train.term_grad_norms = False

    # Eval's generability measure (metrics/generability.py): a small MLP trained for a fixed
    # budget to predict the next latent patch from the previous ones, the same for every variant.
    c.generability = ml_collections.ConfigDict()
    c.generability.patch_frames = 4  # frames per predicted patch (stage 3's patch)
    c.generability.context_patches = 8  # previous patches the model reads
    c.generability.steps = 500  # Adam steps (0 turns the measure off)
    c.generability.batch_size = 128  # windows per step
    c.generability.hidden = 256  # width of the MLP's two hidden layers
    c.generability.learning_rate = 1e-3  # Adam's learning rate
    c.generability.test_fraction = 0.25  # the split's last utterances, held out
    c.generability.seed = 0  # the MLP's init and its batches

    c.data = data_defaults()
    c.mesh = mesh_defaults()
    return c


DOC_SOURCES = (*SHARED_DOC_SOURCES, (train_defaults, "train"), (defaults, ""))

NUMBER_RULES = (
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
    ("bottleneck.vae_min_std", POSITIVE),  # 0 lets the std reach 0 and log(std^2) -inf
    ("loss.kl_weight", NON_NEGATIVE),
    ("train.ema_decay", FRACTION),  # 0 disables the EMA
    ("train.adversarial_start", NON_NEGATIVE),
    ("generability.patch_frames", POSITIVE),
    ("generability.context_patches", POSITIVE),
    ("generability.steps", NON_NEGATIVE),
    ("generability.batch_size", POSITIVE),
    ("generability.hidden", POSITIVE),
    ("generability.learning_rate", POSITIVE),
    ("generability.test_fraction", FRACTION),
)
ENUM_RULES = (
    ("model.remat", REMAT_POLICIES),
    ("bottleneck.kind", BOTTLENECKS),
    ("bottleneck.norm", ("layer", "batch", "none")),
    ("bottleneck.noise", ("uniform", "half_normal", "none")),
)


def check(config: ml_collections.ConfigDict) -> None:
    """What stage 1's fields must agree on; ConfigError naming the field."""
    m = config.model
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
    crop = round(config.data.crop_seconds * config.sample_rate)
    if crop % m.hop:
        raise ConfigError(
            f"config.data.crop_seconds={config.data.crop_seconds} gives {crop} samples, "
            f"not a multiple of the hop {m.hop}"
        )
