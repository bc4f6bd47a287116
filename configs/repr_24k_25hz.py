"""Stage 2 full size over the 25 Hz autoencoder: configs/repr_24k.py with patches of 2 frames.

adapter.downsample = 2 keeps the LLM (and stage 3's patches) at 12.5 Hz, as public summaries
of the paper report; everything else is configs/repr_24k.py's (the RQ-MTP horizons then span
twice the time: the summaries do not say how the paper sets them).
  python -m f3_jax.train --config configs/repr_24k_25hz.py --workdir gs://BUCKET/repr_24k_25hz \
      --config.autoencoder.workdir=gs://BUCKET/ae_24k_25hz --config.llm.path=/path/to/llm
"""

from f3_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "repr_24k")
    c.autoencoder.workdir = "runs/ae_24k_25hz"  # override with the stage-1 run
    c.adapter.downsample = 2  # 25 Hz latents -> 12.5 Hz LLM positions (public summaries)
    return c
