"""A tiny stage-2 setup on disk: a stage-1 export and a tiny LLM directory, plus its config."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from f3_jax import exports
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.stages.representation.config import defaults as representation_defaults
from tests.ae_fixtures import tiny_ae_config
from tests.llm_fixtures import random_params, tiny_config, write_hf_dir

TEXTS = ["the cat", "a hat in the sun", "", "then a tan"]


def write_frozen_models(root: str) -> tuple[str, str]:
    """(autoencoder workdir with export/, LLM directory) under root, written once."""
    ae_dir, llm_dir = os.path.join(root, "ae"), os.path.join(root, "llm")
    if not os.path.exists(os.path.join(ae_dir, exports.EXPORT_DIR, "config.json")):
        ae_config = tiny_ae_config()
        crop = round(ae_config.data.crop_seconds * ae_config.sample_rate)
        model = Autoencoder.from_config(ae_config)
        init = jax.jit(  # jitted: eager init runs op by op, slowly on CPU
            lambda: model.init(
                {"params": jax.random.key(0), "noise": jax.random.key(1)},
                jnp.zeros((1, crop)),
                train=False,
            )
        )
        variables = init()
        exports.write(ae_dir, nn.unbox(variables), ae_config, 0)
    if not os.path.exists(os.path.join(llm_dir, "config.json")):
        llm_config = tiny_config()
        write_hf_dir(llm_dir, llm_config, random_params(llm_config))
    return ae_dir, llm_dir


def tiny_repr_config(root: str, **overrides):
    ae_dir, llm_dir = write_frozen_models(root)
    c = representation_defaults()
    c.sample_rate = 8000
    c.autoencoder.workdir = ae_dir
    c.llm.path = llm_dir
    c.llm.instruction = " the"
    c.llm.max_text_tokens = 12
    c.encoder.width = 32
    c.encoder.depth = 2
    c.encoder.num_heads = 4
    c.encoder.num_kv_heads = 2
    c.encoder.head_dim = 8
    c.encoder.mlp_dim = 64
    c.quantizer.codebook_size = 16
    c.quantizer.num_codebooks = 2
    c.quantizer.code_dim = 4
    c.rq_mtp.horizons = 2
    c.adapter.width = 32
    c.adapter.hidden = 32
    c.optim.warmup_steps = 0
    c.optim.lr = 1e-2
    c.data.crop_seconds = 0.4  # 80 latent frames, 20 LLM positions
    c.data.eval_batch_size = 8
    c.train.batch_size = 8
    c.mesh.data = 1
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def repr_batch(config, seed: int = 0) -> dict:
    """A local numpy batch as the data pipeline gives it (audio, mask, text)."""
    rng = np.random.default_rng(seed)
    b = config.train.batch_size
    length = round(config.data.crop_seconds * config.sample_rate)
    t = np.arange(length) / config.sample_rate
    freqs = rng.uniform(100, 1000, size=(b, 1))
    audio = 0.5 * np.sin(2 * np.pi * freqs * t) + 0.05 * rng.standard_normal((b, length))
    mask = np.ones((b, length), np.float32)
    mask[1, length // 2 :] = 0.0
    text = np.array([TEXTS[i % len(TEXTS)] for i in range(b)], dtype=object)
    return {"audio": (audio * mask).astype(np.float32), "mask": mask, "text": text}
