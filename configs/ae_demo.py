"""Stage 1 demo: a small autoencoder that trains on the demo speech corpus on 2 CPU cores.

  python -m f3_jax.train --config configs/ae_demo.py --workdir runs/ae_demo
Builds the demo corpus at data.path on first use (about 30 minutes of piper speech).
"""

from f3_jax.stages.autoencoder.config import defaults


def get_config():
    c = defaults()
    c.model.channels = 16
    c.model.channel_mults = (1, 2, 4, 8, 16)
    c.discriminator.mpd_channels = 8
    c.discriminator.mpd_max_channels = 128
    c.discriminator.stft_fft_sizes = (1024, 512, 256)
    c.discriminator.stft_channels = 8
    c.loss.mel_window_sizes = (64, 128, 256, 512, 1024, 2048)
    c.loss.mel_bins = (10, 20, 40, 80, 160, 320)
    c.loss.stft_fft_sizes = (1024, 512, 256)
    c.optim.gen_lr = 3e-4
    c.optim.disc_lr = 3e-4
    c.data.path = "data/demo_corpus"
    c.data.build_demo_if_missing = True
    c.data.crop_seconds = 0.4
    c.data.eval_max_examples = 16
    c.train.steps = 500
    c.train.batch_size = 8
    c.train.adversarial_start = 300
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.sample_every = 100
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 2
    return c
