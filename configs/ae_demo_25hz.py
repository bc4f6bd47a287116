"""Stage 1 demo at 25 latent frames per second: configs/ae_demo.py with hop 960.

The 25 Hz values (hop 960, noise up to 1.0, patches of 2 frames) as in configs/ae_24k_25hz.py;
the strides (4, 4, 6, 10) are this project's choice.
  python -m f3_jax.train --config configs/ae_demo_25hz.py --workdir runs/ae_demo_25hz
"""

from f3_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "ae_demo")
    c.model.strides = (4, 4, 6, 10)  # our choice
    c.model.hop = 960  # 25 frames per second at 24 kHz (public summaries)
    c.bottleneck.noise_max = 1.0  # sigma ~ U[0, 1] (public summaries)
    c.generability.patch_frames = 2  # stage 3's patch at 25 Hz
    return c
