"""Stage 2 demo over the 25 Hz demo autoencoder: configs/repr_demo.py with patches of 2 frames.

  python -m f3_jax.train --config configs/repr_demo_25hz.py --workdir runs/repr_demo_25hz \
      --config.autoencoder.workdir=runs/ae_demo_25hz
"""

from f3_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "repr_demo")
    c.autoencoder.workdir = "runs/ae_demo_25hz"
    c.adapter.downsample = 2  # 25 Hz latents -> 12.5 Hz LLM positions (public summaries)
    return c
