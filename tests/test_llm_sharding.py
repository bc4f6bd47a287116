"""The LLM sharded over 8 host devices (fsdp=4, tensor=2) gives the logits of one device."""

import functools

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from f3_jax import parallel
from f3_jax.models.llm import LLM, init_cache, llm_shardings
from f3_jax.models.llm_loaders import load_llm
from tests.llm_fixtures import random_params, tiny_config, write_gguf

IDS = np.random.default_rng(0).integers(3, 200, size=(4, 8)).astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _prefill_and_step(config, params, ids, cache):
    out = LLM(config).apply(params, ids[:, :-1], cache=cache)
    step = LLM(config).apply(params, ids[:, -1:], cache=out["cache"])
    return out["logits"], step["logits"]


def test_sharded_logits_match_one_device(tmp_path):
    config = tiny_config(attention_bias=True, tie_word_embeddings=False)
    path = write_gguf(str(tmp_path / "m.gguf"), config, random_params(config), arch="qwen2")
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4, tensor=2)))

    _, single, _ = load_llm(path)
    ref = jax.block_until_ready(
        _prefill_and_step(config, single, IDS, init_cache(config, IDS.shape[0], 8))
    )

    _, sharded, _ = load_llm(path, mesh=mesh)
    q = sharded["params"]["layers_0"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == P("fsdp", "tensor", None)
    assert jax.tree.map(lambda a: a.sharding, sharded) == llm_shardings(config, mesh)
    with jax.set_mesh(mesh):
        ids = jax.device_put(IDS, parallel.batch_sharding(mesh, 2))
        cache = init_cache(config, IDS.shape[0], 8)
        out = jax.block_until_ready(_prefill_and_step(config, sharded, ids, cache))
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
