"""Stage-2 modules: quantizer targets, encoder causality and caching, RQ-MTP and prompts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3_jax.losses import rq_mtp
from f3_jax.models.adapter import stack_patches
from f3_jax.models.llm import LLM
from f3_jax.models.llm_prompt import tokenize_texts, transcript_nll
from f3_jax.models.quantizer import RandomProjectionQuantizer
from f3_jax.models.representation import RepresentationEncoder
from f3_jax.models.rq_mtp import RQMTPHeads
from tests.llm_fixtures import random_params, tiny_config, tiny_tokenizer

Z = jax.random.normal(jax.random.key(3), (2, 12, 8))
MASK = jnp.ones((2, 12)).at[1, 9:].set(0.0)


def _encoder(causal=True):
    return RepresentationEncoder(32, 2, 4, 2, 8, 64, causal=causal)


def test_quantizer_is_deterministic_for_a_seed():
    q = RandomProjectionQuantizer(num_codebooks=3, codebook_size=32, code_dim=4, stack=2)
    a, b = q.init_params(7, 8), q.init_params(7, 8)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    other = q.init_params(8, 8)
    tok_a, valid = q.apply({"params": a}, Z, MASK)
    tok_o, _ = q.apply({"params": other}, Z, MASK)
    assert tok_a.shape == (2, 12, 3) and tok_a.dtype == jnp.int32
    assert not np.array_equal(tok_a, tok_o)
    assert 0 <= tok_a.min() and tok_a.max() < 32
    # stacking 2 frames: the last real frame of each clip has no successor
    np.testing.assert_array_equal(valid[0], [1] * 11 + [0])
    np.testing.assert_array_equal(valid[1], [1] * 8 + [0] * 4)


def test_quantizer_ignores_frame_level_and_offset():
    q = RandomProjectionQuantizer(num_codebooks=2, codebook_size=64, code_dim=4)
    p = q.init_params(0, 8)
    t1, _ = q.apply({"params": p}, Z, MASK)
    t2, _ = q.apply({"params": p}, 3.0 * Z + 1.5, MASK)
    np.testing.assert_array_equal(t1, t2)


def test_causal_encoder_ignores_the_future():
    enc = _encoder()
    params = enc.init(jax.random.key(0), Z, MASK)
    changed = Z.at[:, 6:].add(5.0)
    r1 = enc.apply(params, Z, MASK)["repr"]
    r2 = enc.apply(params, changed, MASK)["repr"]
    np.testing.assert_allclose(r1[:, :6], r2[:, :6], atol=1e-6)
    assert np.abs(np.asarray(r1[:, 6:] - r2[:, 6:])).max() > 1e-3
    bi = _encoder(causal=False)
    b1 = bi.apply(params, Z, MASK)["repr"]
    b2 = bi.apply(params, changed, MASK)["repr"]
    assert np.abs(np.asarray(b1[:, :6] - b2[:, :6])).max() > 1e-3  # bidirectional sees it


@pytest.mark.slow  # generation's incremental = recompute test covers the cached encoder too
def test_incremental_encoding_equals_full():
    enc = _encoder()
    params = enc.init(jax.random.key(0), Z, MASK)
    full = enc.apply(params, Z, MASK)["repr"]
    cache = enc.init_cache(2, 12)
    parts = []
    for lo, hi in ((0, 5), (5, 6), (6, 12)):
        out = enc.apply(params, Z[:, lo:hi], MASK[:, lo:hi], cache=cache)
        parts.append(out["repr"])
        cache = out["cache"]
    inc = jnp.concatenate(parts, axis=1)
    real = np.asarray(MASK, bool)
    np.testing.assert_allclose(np.asarray(inc)[real], np.asarray(full)[real], atol=1e-5)


def test_future_targets_and_masks():
    tokens = jnp.arange(2 * 5 * 1).reshape(2, 5, 1)
    valid = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], jnp.float32)
    targets, mask = rq_mtp.future_targets(tokens, valid, 2)
    assert targets.shape == (2, 5, 2, 1)
    assert int(targets[0, 1, 0, 0]) == 2 and int(targets[0, 1, 1, 0]) == 3
    np.testing.assert_array_equal(mask[0, :, 0], [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(mask[0, :, 1], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(mask[1, :, 0], [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(mask[1, :, 1], [1, 0, 0, 0, 0])


def test_rq_mtp_loss_ignores_masked_targets_and_scores_accuracy():
    targets = jnp.array([[[[1, 2]], [[3, 0]]]])  # (B=1, T=2, k=1, C=2)
    mask = jnp.array([[[1.0], [0.0]]])
    logits = jax.nn.one_hot(targets, 4) * 10.0
    loss, acc = rq_mtp.loss_and_accuracy(logits, targets, mask)
    assert float(loss) < 1e-3 and float(acc[0]) == 1.0
    wrong_masked = logits.at[0, 1].set(0.0)  # only the masked frame changes
    assert float(rq_mtp.loss_and_accuracy(wrong_masked, targets, mask)[0]) == float(loss)
    uniform = jnp.zeros_like(logits)
    np.testing.assert_allclose(rq_mtp.loss_and_accuracy(uniform, targets, mask)[0], np.log(4))


def test_chunked_rq_mtp_stats_equal_the_full_logits():
    """Cross-entropy one (head, codebook) chunk at a time: same loss, accuracy and gradients."""
    heads = RQMTPHeads(3, 2, 16)
    r = jax.random.normal(jax.random.key(0), (2, 10, 8))
    params = nn.unbox(heads.init(jax.random.key(1), r))["params"]
    tokens = jax.random.randint(jax.random.key(2), (2, 10, 2), 0, 16)
    targets, tmask = rq_mtp.future_targets(tokens, jnp.ones((2, 10)).at[1, 7:].set(0), 3)

    def full(p, r):
        stats = rq_mtp.per_example_stats(heads.apply({"params": p}, r), targets, tmask)
        return rq_mtp.loss_and_accuracy_from_stats(stats, 2), stats

    def chunked(p, r):
        k = p["heads"]
        stats = rq_mtp.chunked_per_example_stats(k["kernel"], k["bias"], r, targets, tmask)
        return rq_mtp.loss_and_accuracy_from_stats(stats, 2), stats

    (want, want_acc), want_stats = jax.jit(full)(params, r)
    (got, got_acc), got_stats = jax.jit(chunked)(params, r)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got_acc, want_acc)
    for key in want_stats:
        np.testing.assert_allclose(got_stats[key], want_stats[key], rtol=1e-6, err_msg=key)
    grad = lambda f: jax.jit(jax.grad(lambda p, r: f(p, r)[0][0], argnums=(0, 1)))(params, r)
    for g, w in zip(jax.tree.leaves(grad(chunked)), jax.tree.leaves(grad(full))):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)


def test_stack_patches_pads_and_masks():
    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    m = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], jnp.float32)
    p, pm = stack_patches(x, m, 2)
    assert p.shape == (2, 3, 6)
    np.testing.assert_array_equal(p[0, 1], np.concatenate([x[0, 2], x[0, 3]]))
    np.testing.assert_array_equal(pm, [[1, 1, 1], [1, 0, 0]])


def test_transcript_loss_counts_text_tokens_only():
    config = tiny_config()
    llm, params = LLM(config), random_params(config)
    tok = tiny_tokenizer()
    ids, tmask = tokenize_texts(tok, ["the cat", "", "a very long sentence " * 5], 10)
    assert tmask[1].sum() == 0 and tmask[2].sum() == 10 and ids[0, int(tmask[0].sum()) - 1] == 2
    audio = jax.random.normal(jax.random.key(0), (3, 4, config.hidden_size))
    amask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], jnp.float32)
    instr = np.asarray(tok.encode(" the"), np.int32)
    nll, count = transcript_nll(llm, params, audio, amask, instr, jnp.asarray(ids), tmask)
    np.testing.assert_array_equal(count, tmask.sum(1))
    assert float(nll[1]) == 0.0 and float(nll[0]) > 0.0
    # padding of the audio (masked embeddings) does not change the result
    noisy = audio.at[1, 2:].set(100.0).at[0, :].add(0.0)
    nll2, _ = transcript_nll(llm, params, noisy, amask, instr, jnp.asarray(ids), tmask)
    np.testing.assert_allclose(nll2, nll, rtol=1e-5)
