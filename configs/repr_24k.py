"""Stage 2 at full size: width-1024 causal encoder over the 24 kHz autoencoder's latents.

  python -m f3_jax.train --config configs/repr_24k.py --workdir gs://BUCKET/repr_24k \
      --config.autoencoder.workdir=gs://BUCKET/ae_24k --config.llm.path=/path/to/llm
The LLM is any Llama-family GGUF file or Hugging Face directory (config.llm.path).
"""

from f3_jax.stages.representation.config import defaults


def get_config():
    c = defaults()
    c.autoencoder.workdir = "runs/ae_24k"  # override with the stage-1 run
    c.compute_dtype = "bfloat16"
    c.llm.dtype = "bfloat16"
    c.llm.param_dtype = "bfloat16"
    c.encoder.scan_layers = True  # one compiled block for the 12
    c.autoencoder.dtype = "bfloat16"  # frozen stage 1: bf16 compute and weights
    c.autoencoder.param_dtype = "bfloat16"
    c.data.path = "data/librispeech"
    c.data.crop_seconds = 20.0
    c.data.eval_max_seconds = 20.0
    c.data.eval_bucket_seconds = (5.0, 10.0, 20.0)
    c.train.steps = 200_000
    c.train.batch_size = 256
    c.data.eval_batch_size = 256
    c.mesh.fsdp = -1
    c.mesh.data = 1
    return c
