"""Stage 1 full size at 25 latent frames per second: configs/ae_24k.py with hop 960.

Public summaries of the F3 paper report 25 Hz latents at 24 kHz, patches of 2 frames (12.5 Hz
generation) and a noise level drawn uniformly up to 1.0; those three values are from there.
The strides (4, 4, 6, 10) are this project's choice (the summaries give no architecture): the
first block of ae_24k.py strides 4 instead of 2, the rest is unchanged.
  python -m f3_jax.train --config configs/ae_24k_25hz.py --workdir gs://BUCKET/ae_24k_25hz
"""

from f3_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "ae_24k")
    c.model.strides = (4, 4, 6, 10)  # our choice
    c.model.hop = 960  # 25 frames per second at 24 kHz (public summaries)
    c.bottleneck.noise_max = 1.0  # sigma ~ U[0, 1] (public summaries)
    c.generability.patch_frames = 2  # stage 3's patch at 25 Hz (public summaries)
    return c
