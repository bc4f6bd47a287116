"""Stage 1 full size: 24 kHz mono, hop 480 (50 latent frames/s), 64 latent channels, bf16.

Encoder widths 64 -> 1024 over strides (2, 4, 6, 10), DAC/Oobleck sized (tens of millions of
parameters). For pods: set data.path to a prepare'd corpus and mesh.* for the slice, e.g.
  --config.data.path=gs://bucket/libritts --config.mesh.fsdp=8
"""

from f3_jax.stages.autoencoder.config import defaults


def get_config():
    c = defaults()
    c.compute_dtype = "bfloat16"
    c.model.channels = 64
    c.model.channel_mults = (1, 2, 4, 8, 16)
    c.model.strides = (2, 4, 6, 10)
    c.model.hop = 480
    c.model.latent_dim = 64
    c.data.path = "data/corpus_24k"
    c.data.crop_seconds = 1.0
    c.data.gain_db = (-6.0, 0.0)
    c.data.eval_batch_size = 64  # like the train batch: splits over up to 64 devices
    c.train.steps = 400_000
    c.train.batch_size = 64
    c.train.adversarial_start = 5_000
    c.train.ema_decay = 0.999
    c.optim.warmup_steps = 1_000
    c.optim.schedule = "cosine"
    c.mesh.data = -1
    return c
