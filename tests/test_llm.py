"""The LLM module on a tiny random model: cache, embeddings input, padding, hidden states, grads."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3_jax.models.llm import LLM, greedy_ids, init_cache
from f3_jax.models.llm_layers import rope_inv_freq
from tests.llm_fixtures import random_params, tiny_config

IDS = np.array([[5, 40, 77, 3, 120, 9, 200, 31]], np.int32)


@pytest.fixture(scope="module")
def model():
    """Every optional feature at once: q/k/v biases (Qwen2), q/k norms (Qwen3), untied head."""
    config = tiny_config(attention_bias=True, qk_norm=True, tie_word_embeddings=False)
    return config, random_params(config)


@functools.partial(
    jax.jit, static_argnums=0, static_argnames=("output_hidden_layers", "return_logits")
)
def _apply(config, params, *args, **kwargs):
    return LLM(config).apply(params, *args, **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _embed(config, params, ids):
    return LLM(config).apply(params, ids, method=LLM.embed)


def test_kv_cache_decoding_equals_full_recompute(model):
    config, params = model
    full = _apply(config, params, IDS)["logits"]
    cache = init_cache(config, 1, 12)
    out = _apply(config, params, IDS[:, :5], cache=cache)
    steps = [out["logits"]]
    cache = out["cache"]
    for t in range(5, IDS.shape[1]):
        out = _apply(config, params, IDS[:, t : t + 1], cache=cache)
        steps.append(out["logits"])
        cache = jax.block_until_ready(out["cache"])
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5, rtol=1e-5)


def test_embeddings_input_equals_ids_input():
    config = tiny_config()
    params = random_params(config)
    embeds = _embed(config, params, IDS)
    by_ids = _apply(config, params, IDS, output_hidden_layers=(1,))
    by_embeds = _apply(config, params, inputs_embeds=embeds, output_hidden_layers=(1,))
    np.testing.assert_array_equal(by_ids["logits"], by_embeds["logits"])
    np.testing.assert_array_equal(by_ids["hidden_states"][1], by_embeds["hidden_states"][1])


def test_left_padding_matches_unpadded_rows():
    config = tiny_config(qk_norm=True)
    params = random_params(config)
    padded = np.concatenate([np.zeros((1, 3), np.int32), IDS], axis=1)
    mask = np.concatenate([np.zeros((1, 3)), np.ones(IDS.shape)], axis=1)
    ref = _apply(config, params, IDS)["logits"]
    out = _apply(config, params, padded, attention_mask=mask)["logits"]
    np.testing.assert_allclose(out[:, 3:], ref, atol=2e-5, rtol=1e-5)


def test_padded_cached_batch_matches_unpadded():
    config = tiny_config()
    params = random_params(config)
    short = IDS[:, :5]
    batch = np.concatenate([IDS[:, :6], np.concatenate([[[0]], short], axis=1)], axis=0)
    mask = np.array([[1] * 6, [0] + [1] * 5])
    cache = init_cache(config, 2, 8)
    out = _apply(config, params, batch, attention_mask=mask, cache=cache)
    step = _apply(config, params, np.array([[IDS[0, 6]], [IDS[0, 5]]]), cache=out["cache"])
    ref = _apply(config, params, IDS[:, :7])["logits"]  # causal: position t sees tokens <= t
    ref_long, ref_short = ref[0, 6], ref[0, 5]
    np.testing.assert_allclose(step["logits"][0, 0], ref_long, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(step["logits"][1, 0], ref_short, atol=2e-5, rtol=1e-5)


def test_hidden_states_indices_and_final_hidden():
    config = tiny_config()
    params = random_params(config)
    out = _apply(config, params, IDS, output_hidden_layers=(0, -1), return_logits=False)
    assert out["logits"] is None
    assert sorted(out["hidden_states"]) == [0, config.num_layers]
    embeds = _embed(config, params, IDS)
    np.testing.assert_array_equal(out["hidden_states"][0], embeds)
    assert out["hidden"].shape == (1, IDS.shape[1], config.hidden_size)
    with pytest.raises(ValueError, match="out of range"):
        _apply(config, params, IDS, output_hidden_layers=(config.num_layers + 1,))


def test_frozen_bf16_params_pass_gradients_to_inputs():
    config = tiny_config(dtype="bfloat16")
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), random_params(config))
    embeds = _embed(config, params, IDS).astype(jnp.float32)

    def loss(x):
        logits = _apply(config, jax.lax.stop_gradient(params), inputs_embeds=x)["logits"]
        return jax.nn.log_softmax(logits)[0, -1, 7]

    grad = jax.jit(jax.grad(loss))(embeds)
    assert grad.dtype == jnp.float32
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0


def test_greedy_ids_match_argmax_of_full_forward():
    config = tiny_config()
    params = random_params(config)
    new = greedy_ids(params, config, IDS[0, :4].tolist(), 4)
    seq = np.array([IDS[0, :4].tolist() + new[:-1]], np.int32)
    argmax = np.argmax(_apply(config, params, seq)["logits"][0, 3:], axis=-1)
    assert new == argmax.tolist()


def test_llama3_rope_scaling_keeps_high_and_slows_low_frequencies():
    scaling = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    base = rope_inv_freq(128, 500000.0, None)
    scaled = rope_inv_freq(128, 500000.0, scaling)
    assert scaled[0] == base[0]  # wavelength 2*pi << 8192 / 4
    np.testing.assert_allclose(scaled[-1], base[-1] / 8, rtol=1e-6)
    assert np.all(scaled <= base) and np.all(scaled >= base / 8 * (1 - 1e-6))
    config = dataclasses.replace(tiny_config(), rope_scaling=scaling)
    assert hash(config)  # usable as a static jit argument
