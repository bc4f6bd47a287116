"""Stage 3 demo over the 25 Hz demo stages 1 and 2: configs/flow_demo.py reading those runs.

  python -m f3_jax.train --config configs/flow_demo_25hz.py --workdir runs/flow_demo_25hz \
      --config.autoencoder.workdir=runs/ae_demo_25hz \
      --config.representation.workdir=runs/repr_demo_25hz
"""

from f3_jax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "flow_demo")
    c.autoencoder.workdir = "runs/ae_demo_25hz"
    c.representation.workdir = "runs/repr_demo_25hz"
    c.flow_loss.stop_pos_weight = 5.0  # one positive among ~12 patches per 6 s clip
    return c
