"""A tiny stage-1 config and synthetic batches, shared by the training tests."""

import numpy as np

from f3_jax.stages.autoencoder.config import defaults as autoencoder_defaults


def tiny_ae_config(**overrides):
    c = autoencoder_defaults()
    c.sample_rate = 8000
    c.model.channels = 8
    c.model.channel_mults = (1, 2, 4, 4)
    c.model.strides = (2, 4, 5)
    c.model.hop = 40
    c.model.latent_dim = 8
    c.model.kernel_size = 3
    c.model.dilations = (1, 3)
    c.discriminator.mpd_periods = (2, 3)
    c.discriminator.mpd_channels = 4
    c.discriminator.mpd_max_channels = 16
    c.discriminator.stft_fft_sizes = (128,)
    c.discriminator.stft_bands = ((0.0, 0.5), (0.5, 1.0))
    c.discriminator.stft_channels = 4
    c.loss.mel_window_sizes = (64, 128)
    c.loss.mel_bins = (8, 16)
    c.loss.stft_fft_sizes = (128, 64)
    c.data.crop_seconds = 0.1
    c.data.eval_batch_size = 8
    c.train.batch_size = 8
    c.train.steps = 4
    c.train.adversarial_start = 0
    c.mesh.data = 1
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def synthetic_batch(config, seed: int = 0, batch: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    batch = batch or config.train.batch_size
    length = round(config.data.crop_seconds * config.sample_rate)
    t = np.arange(length) / config.sample_rate
    freqs = rng.uniform(100, 1000, size=(batch, 1))
    audio = 0.5 * np.sin(2 * np.pi * freqs * t) + 0.05 * rng.standard_normal((batch, length))
    mask = np.ones((batch, length), np.float32)
    mask[0, length // 2 :] = 0.0  # one padded clip
    return {"audio": (audio * mask).astype(np.float32), "mask": mask}
