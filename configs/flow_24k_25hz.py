"""Stage 3 full size over the 25 Hz stages 1 and 2: configs/flow_24k.py reading those runs.

The patch (2 frames of 64 channels, 12.5 Hz) comes from the stage-2 run's adapter.downsample.
  python -m f3_jax.train --config configs/flow_24k_25hz.py --workdir gs://BUCKET/flow_24k_25hz \
      --config.autoencoder.workdir=gs://BUCKET/ae_24k_25hz \
      --config.representation.workdir=gs://BUCKET/repr_24k_25hz --config.llm.path=/path/to/llm
"""

from f3_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "flow_24k")
    c.autoencoder.workdir = "runs/ae_24k_25hz"  # override with the stage-1 and stage-2 runs
    c.representation.workdir = "runs/repr_24k_25hz"
    return c
