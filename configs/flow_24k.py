"""Stage 3 at full size: a 1024-wide, 6-block patch flow head over the 24 kHz stages 1 and 2.

  python -m f3_jax.train --config configs/flow_24k.py --workdir gs://BUCKET/flow_24k \
      --config.autoencoder.workdir=gs://BUCKET/ae_24k \
      --config.representation.workdir=gs://BUCKET/repr_24k --config.llm.path=/path/to/llm
"""

from f3_jax.stages.flow.config import defaults


def get_config():
    c = defaults()
    c.autoencoder.workdir = "runs/ae_24k"  # override with the stage-1 and stage-2 runs
    c.representation.workdir = "runs/repr_24k"
    c.compute_dtype = "bfloat16"
    c.llm.dtype = "bfloat16"
    c.llm.param_dtype = "bfloat16"
    c.autoencoder.dtype = "bfloat16"  # frozen stage 1: bf16 compute and weights
    c.autoencoder.param_dtype = "bfloat16"
    c.representation.dtype = "bfloat16"
    c.representation.param_dtype = "bfloat16"
    c.flow_loss.stop_pos_weight = 10.0
    c.data.path = "data/librispeech"
    c.data.crop_seconds = 20.0
    c.data.eval_max_seconds = 20.0
    c.data.eval_bucket_seconds = (5.0, 10.0, 20.0)
    c.data.eval_batch_size = 256
    c.train.steps = 200_000
    c.train.batch_size = 256
    c.mesh.fsdp = -1
    c.mesh.data = 1
    return c
