"""Rematerialization and nn.scan variants compute what the plain modules compute.

Each variant is checked against the plain module on the same parameters (scanned ones stacked
with `stack_layer_params`): same outputs, same loss, same gradients, and the KV cache path.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3_jax import config as config_lib
from f3_jax import stages
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.models.flow_head import PatchFlowHead
from f3_jax.models.llm import LLM, init_cache, stack_layer_params, unstack_layer_params
from f3_jax.models.llm_layers import REMAT_POLICIES
from f3_jax.models.representation import RepresentationEncoder
from tests.llm_fixtures import random_params, tiny_config

Z = jax.random.normal(jax.random.key(3), (2, 12, 8))
MASK = jnp.ones((2, 12)).at[1, 9:].set(0.0)
IDS = jnp.asarray([[5, 40, 77, 3, 120, 9]], jnp.int32)


def _close(a, b, rtol=1e-4):
    """Leaf by leaf, to rtol of each leaf's largest value (recomputation reorders sums)."""
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        atol = rtol * float(np.abs(y).max())
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def _encoder(**kw):
    return RepresentationEncoder(32, 3, 4, 2, 8, 64, **kw)


@pytest.fixture(scope="module")
def encoder_params():
    return nn.unbox(_encoder().init(jax.random.key(0), Z, MASK))["params"]


def _encoder_loss(module, params):
    r = module.apply({"params": params}, Z, MASK)["repr"]
    return jnp.sum(jnp.sin(r) * MASK[..., None])


_encoder_grad = jax.jit(jax.value_and_grad(_encoder_loss, argnums=1), static_argnums=0)


@pytest.fixture(scope="module")
def encoder_reference(encoder_params):
    return _encoder_grad(_encoder(), encoder_params)


def test_config_names_are_the_models():
    assert config_lib.REMAT_POLICIES == REMAT_POLICIES


@pytest.mark.parametrize(
    "remat, scan",
    [
        ("dots_saveable", False),
        ("full", True),
        pytest.param("full", False, marks=pytest.mark.slow),
        pytest.param("none", True, marks=pytest.mark.slow),
    ],
)
def test_encoder_variants_same_loss_and_gradients(encoder_params, encoder_reference, remat, scan):
    module = _encoder(remat=remat, scan_layers=scan)
    params = stack_layer_params(encoder_params, 3) if scan else encoder_params
    want, want_g = encoder_reference
    got, got_g = _encoder_grad(module, params)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    if scan:
        got_g = unstack_layer_params(got_g)
    _close(got_g, want_g)


def test_scanned_encoder_parameters_have_a_layers_axis():
    boxed = jax.eval_shape(_encoder(scan_layers=True).init, jax.random.key(0), Z, MASK)
    q = boxed["params"]["layers"]["attn"]["q_proj"]["kernel"]
    assert q.names == ("layers", "embed", "heads", "head_dim") and q.value.shape[0] == 3
    assert "layers_0" not in boxed["params"]


def test_scanned_encoder_incremental_equals_full(encoder_params):
    enc = _encoder(scan_layers=True)
    params = {"params": stack_layer_params(encoder_params, 3)}
    apply = jax.jit(lambda z, m, cache=None: enc.apply(params, z, m, cache=cache))
    full = apply(Z, MASK)["repr"]
    cache = enc.init_cache(2, 12)
    assert cache["k"].shape == (3, 2, 12, 2, 8)  # stacked over the layers
    parts = []
    for lo, hi in ((0, 5), (5, 6), (6, 12)):
        out = apply(Z[:, lo:hi], MASK[:, lo:hi], cache)
        parts.append(out["repr"])
        cache = out["cache"]
    inc = jnp.concatenate(parts, axis=1)
    real = np.asarray(MASK, bool)
    np.testing.assert_allclose(np.asarray(inc)[real], np.asarray(full)[real], atol=1e-5)


def test_llm_scan_and_remat_same_logits_cache_and_input_gradients():
    config = tiny_config(num_layers=3)
    params = random_params(config)
    scanned = dataclasses.replace(config, scan_layers=True, remat="dots_saveable")
    sparams = {"params": stack_layer_params(params["params"], 3)}
    apply = jax.jit(
        lambda cfg, p, ids, cache=None: LLM(cfg).apply(p, ids, cache=cache), static_argnums=0
    )
    want = apply(config, params, IDS)
    got = apply(scanned, sparams, IDS)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)
    cache = init_cache(scanned, 1, 8)
    first = apply(scanned, sparams, IDS[:, :4], cache)
    rest = apply(scanned, sparams, IDS[:, 4:], first["cache"])
    np.testing.assert_allclose(rest["logits"], want["logits"][:, 4:], atol=1e-5)

    def loss(cfg, p, e):
        return jnp.sum(jnp.tanh(LLM(cfg).apply(p, inputs_embeds=e, return_logits=False)["hidden"]))

    embeds = LLM(config).apply(params, IDS, method=LLM.embed)
    grad = jax.jit(jax.grad(loss, argnums=2), static_argnums=0)
    g_want = grad(config, params, embeds)
    g_got = grad(scanned, sparams, embeds)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-4, atol=1e-5 * float(np.abs(g_want).max()))
    with pytest.raises(ValueError, match="scan_layers=False"):
        LLM(scanned).apply(sparams, IDS, output_hidden_layers=(1,))


@pytest.mark.parametrize(
    "remat", [pytest.param("full", marks=pytest.mark.slow), "dots_saveable"]
)  # dots_saveable: the policy that keeps convolutions
def test_autoencoder_remat_same_parameters_and_gradients(remat):
    plain = Autoencoder(
        channels=2, channel_mults=(1, 2), strides=(2,), latent_dim=4, dilations=(1,)
    )
    wav = jax.random.normal(jax.random.key(1), (2, 32))
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    variables = nn.unbox(jax.jit(plain.init)(rngs, wav))
    other = plain.clone(remat=remat)
    shapes = jax.eval_shape(other.init, rngs, wav)
    assert jax.tree.structure(nn.unbox(shapes)) == jax.tree.structure(variables)

    def loss(model, params):
        out = model.apply({"params": params}, wav, train=True, rngs={"noise": jax.random.key(2)})
        return jnp.mean(jnp.square(out["wav"] - wav))

    grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
    want, want_g = grad(plain, variables["params"])
    got, got_g = grad(other, variables["params"])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    _close(got_g, want_g)


def test_flow_head_remat_same_gradients():
    plain = PatchFlowHead(16, 2, 2, 4, 8, 0.0)
    x = jax.random.normal(jax.random.key(0), (3, 2, 4))
    t, h, d = jnp.linspace(0.1, 0.9, 3), jnp.ones((3, 6)), jnp.ones((3, 5))
    params = nn.unbox(plain.init(jax.random.key(1), x, t, h, d))["params"]
    # the zero-initialized modulations would hide the blocks: perturb every parameter
    params = jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)

    def loss(model, p):
        return jnp.sum(jnp.square(model.apply({"params": p}, x, t, h, d)))

    grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
    want = grad(plain, params)
    got = grad(plain.clone(remat="full"), params)
    _close(got, want)


@pytest.mark.parametrize(
    "stage, key",
    [
        ("autoencoder", "model.remat"),
        ("representation", "encoder.remat"),
        ("representation", "llm.remat"),
        ("flow", "flow_head.remat"),
    ],
)
def test_bad_remat_value_is_named(stage, key):
    c = stages.defaults_for(stage)
    c.mesh.data = 1
    c.train.batch_size = c.data.eval_batch_size = 8
    for group in ("autoencoder", "representation"):
        if group in c:
            c[group].workdir = "x"
    group, name = key.split(".")
    c[group][name] = "everything"
    with pytest.raises(config_lib.ConfigError, match=rf"config\.{key}='everything'"):
        stages.check_config(c, 1)


def test_jaxpr_flops_count_every_scanned_layer():
    """XLA's cost analysis counts a loop body once; the step FLOP count must not."""
    from f3_jax.flops import jaxpr_flops

    def scanned(w, x):
        return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0].sum()

    w, x = jnp.ones((6, 32, 32)), jnp.ones((4, 32))
    forward = 6 * 2 * 4 * 32 * 32
    assert jaxpr_flops(jax.make_jaxpr(scanned)(w, x)) == forward
    # gradient of a rematerialized scan: forward, recomputed forward, two transposed products
    grad = jax.make_jaxpr(jax.grad(jax.checkpoint(scanned), argnums=(0, 1)))(w, x)
    assert jaxpr_flops(grad) == 4 * forward
    conv = lambda k, x: jax.lax.conv_general_dilated(
        x, k, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")
    )
    k, xs = jnp.ones((3, 4, 5)), jnp.ones((2, 10, 4))
    assert jaxpr_flops(jax.make_jaxpr(conv)(k, xs)) == 2 * 2 * 10 * 5 * 3 * 4


def _buffer_pointers(tree) -> list[int]:
    return [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(tree)]


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_leaves_are_distinct_buffers_and_donate(scan):
    """The cache is donated to the decode steps: two leaves sharing a buffer fail at run time
    ("Attempt to donate the same buffer twice"), which greedy transcription hit with
    scan_layers=True, the stage-2 default."""
    from f3_jax.models.llm_prompt import greedy_transcribe

    config = dataclasses.replace(tiny_config(num_layers=2), scan_layers=scan)
    params = random_params(tiny_config(num_layers=2))
    if scan:
        params = {"params": stack_layer_params(params["params"], 2)}
    pointers = _buffer_pointers(init_cache(config, 2, 8))
    assert len(set(pointers)) == len(pointers)
    embeds = LLM(config).apply(params, IDS[:, :4], method=LLM.embed)
    prefix = jnp.concatenate([embeds, embeds], axis=0)
    ids = greedy_transcribe(params, config, prefix, jnp.ones((2, 4)), 3, eos_id=-1)
    assert [len(row) for row in ids] == [3, 3]
