"""Stage 3 demo: a small patch flow head on the demo corpus, over the demo stages 1 and 2.

  python -m f3_jax.train --config configs/flow_demo.py --workdir runs/flow_demo \
      --config.autoencoder.workdir=runs/ae_demo --config.representation.workdir=runs/repr_demo
  python -m f3_jax.generate --workdir runs/flow_demo --text "Room 42 is on floor 7." --out hi.wav
"""

from f3_jax.stages.flow.config import defaults


def get_config():
    c = defaults()
    c.autoencoder.workdir = "runs/ae_demo"
    c.representation.workdir = "runs/repr_demo"
    c.llm.path = "smollm2"
    c.llm.max_text_tokens = 40
    c.flow_head.width = 256
    c.flow_head.depth = 4
    c.flow_head.time_embed_dim = 128
    c.flow_head.stop_hidden = 128
    c.flow_loss.stop_pos_weight = 10.0  # one positive among ~25 patches per clip
    c.sampling.num_steps = 8
    c.sampling.max_seconds = 10.0
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.data.path = "data/demo_corpus"
    c.data.build_demo_if_missing = True
    c.data.crop_seconds = 6.0
    c.data.eval_max_seconds = 16.0
    c.data.eval_bucket_seconds = (8.0, 16.0)
    c.data.eval_batch_size = 8
    c.data.eval_max_examples = 16
    c.train.steps = 120
    c.train.batch_size = 4
    c.train.log_every = 10
    c.train.eval_every = 60
    c.train.sample_every = 60
    c.train.checkpoint_every = 60
    c.train.keep_checkpoints = 2
    return c
