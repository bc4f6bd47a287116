"""Stage-3 flow tests: ODE samplers against the exact rectified flow of a Gaussian, a tiny
PatchFlowHead trained on a conditional toy distribution, the head's conditioning and init
identity, and the masking of the flow and stop losses."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from f3_jax.losses.flow_matching import (
    flow_matching_loss,
    interpolate,
    sample_flow_time,
    stop_loss,
)
from f3_jax.models.flow_head import PatchFlowHead, StopHead
from f3_jax.parallel import LOGICAL_AXES
from f3_jax.sampling import sample_flow

# --- the exact rectified flow from N(0, I) to N(mu, S) -------------------------------------
# x_t = (1 - t) x0 + t x1 is Gaussian: mean t mu, covariance C_t = (1 - t)^2 I + t^2 S, and
# Cov(x1 - x0, x_t) = t S - (1 - t) I =: K_t. So E[x1 - x0 | x_t] = mu + K_t C_t^-1 (x_t - t mu).
# K_t and C_t are polynomials in S: in S's eigenbasis the gain is a scalar per eigenvalue.
MU = jnp.array([1.0, -2.0, 0.5])
_A = np.array([[1.0, 0.3, 0.0], [0.3, 0.5, -0.2], [0.0, -0.2, 2.0]])
SIGMA = jnp.asarray(0.5 * _A @ _A.T + 0.1 * np.eye(3), jnp.float32)  # eigenvalues 0.16 .. 2.2


def gaussian_velocity(mu, sigma):
    lam, u = jnp.linalg.eigh(sigma)

    def velocity(x, t, drop_condition):
        t = t[:, None]
        gain = (t * lam - (1 - t)) / ((1 - t) ** 2 + t**2 * lam)
        return mu + (((x - t * mu) @ u) * gain) @ u.T

    return velocity


def affine_map(velocity, method, num_steps):
    """Euler and Heun steps of an affine field are affine: x1 = A x0 + b, found from d+1 points.

    Then the sampled distribution is exactly N(b, A A^T), with no Monte-Carlo noise.
    """
    d = MU.shape[0]
    points = jnp.concatenate([jnp.zeros((1, d)), jnp.eye(d)])
    out = sample_flow(velocity, points, num_steps=num_steps, method=method)
    b = out[0]
    a = (out[1:] - b).T
    return b, a @ a.T


@pytest.mark.parametrize("method, steps", [("heun", 32), ("euler", 200)])
def test_sampler_reproduces_gaussian_target(method, steps):
    noise = jax.random.normal(jax.random.key(0), (20000, 3))
    x = np.asarray(sample_flow(gaussian_velocity(MU, SIGMA), noise, num_steps=steps, method=method))
    np.testing.assert_allclose(x.mean(0), MU, atol=0.05)  # MC std of the mean <= 0.011
    np.testing.assert_allclose(np.cov(x.T), SIGMA, atol=0.1)  # MC std of entries <= 0.022


def test_heun_beats_euler_and_orders_of_convergence():
    velocity = gaussian_velocity(MU, SIGMA)

    def cov_error(method, steps):
        b, cov = affine_map(velocity, method, steps)
        # the mean path t * mu is a straight line: both samplers get the mean exactly
        np.testing.assert_allclose(b, MU, atol=1e-4)
        return float(jnp.max(jnp.abs(cov - SIGMA)))

    euler = [cov_error("euler", n) for n in (8, 16, 32)]
    heun = [cov_error("heun", n) for n in (8, 16, 32)]
    assert heun[0] < euler[0] / 10
    assert 0.35 < euler[2] / euler[1] < 0.65  # first order: halving the step halves the error
    assert heun[2] / heun[1] < 0.35  # second order: about a quarter
    assert heun[2] < 2e-3


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional():
    cond = gaussian_velocity(MU, SIGMA)
    uncond = gaussian_velocity(-MU, jnp.eye(3))
    calls = []

    def velocity(x, t, drop):
        calls.append(x.shape[0])
        keep = ~drop[:, None]
        return jnp.where(keep, cond(x, t, drop), uncond(x, t, drop))

    noise = jax.random.normal(jax.random.key(1), (64, 3))
    plain = sample_flow(velocity, noise, num_steps=8, temperature=0.7)
    assert calls[-1] == 64  # scale exactly 1: the unconditional half is skipped
    sample = jax.jit(
        lambda noise, scale: sample_flow(
            velocity, noise, num_steps=8, guidance_scale=scale, temperature=0.7
        )
    )
    one = sample(noise, 1.0)  # traced under jit: always the batched path
    assert calls[-1] == 128  # one call on [cond; uncond]
    np.testing.assert_allclose(one, plain, atol=1e-5)
    zero = sample(noise, 0.0)
    only_uncond = sample_flow(uncond, noise, num_steps=8, temperature=0.7)
    np.testing.assert_allclose(zero, only_uncond, atol=1e-5)
    with pytest.raises(ValueError, match="sampler"):
        sample_flow(velocity, noise, method="rk4")


# --- the flow head ---------------------------------------------------------------------------
P, D, H_LLM, H_REPR = 2, 4, 6, 5
TINY = dict(width=32, depth=2, patch_frames=P, latent_dim=D, time_embed_dim=16)


def random_inputs(seed, batch=(3,)):
    # numpy draws: eager jax.random calls each compile a kernel, slow on a busy CPU
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.normal(size=batch + (P, D)), jnp.float32),
        jnp.asarray(rng.uniform(size=batch), jnp.float32),
        jnp.asarray(rng.normal(size=batch + (H_LLM,)), jnp.float32),
        jnp.asarray(rng.normal(size=batch + (H_REPR,)), jnp.float32),
    )


@pytest.fixture(scope="module")
def tiny():
    """(head, boxed variables, jitted apply): one init compile shared by the head tests."""
    head = PatchFlowHead(**TINY)
    variables = jax.jit(head.init)(jax.random.key(0), *random_inputs(0))
    return head, variables, jax.jit(head.apply, static_argnames="train")


def test_head_shapes_and_logical_axes(tiny):
    head, variables, apply = tiny
    boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert boxed and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in boxed)
    assert all(n in LOGICAL_AXES for leaf in boxed for n in leaf.names)
    assert all(len(leaf.names) == leaf.value.ndim for leaf in boxed)
    params = nn.unbox(variables)
    v = apply(params, *random_inputs(1, (2, 3)))  # any leading dims: (B, N patches)
    assert v.shape == (2, 3, P, D) and v.dtype == jnp.float32
    with pytest.raises(ValueError, match="expected"):
        head.apply(params, jnp.zeros((3, D, P)), *random_inputs(1)[1:])


def test_head_at_init_is_out_proj_of_normalized_input_embedding(tiny):
    """Zero-initialized adaLN layers: every block is the identity, t and c play no part."""
    _, variables, apply = tiny
    params = nn.unbox(variables)
    x, t, llm, rep = random_inputs(2)
    v = apply(params, x, t, llm, rep)
    p = params["params"]
    h = x.reshape(3, P * D) @ p["in_proj"]["kernel"] + p["in_proj"]["bias"]
    h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-6)
    expected = h @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]
    np.testing.assert_allclose(v, expected.reshape(3, P, D), atol=1e-5)
    other = apply(params, x, 1 - t, -llm, rep * 2 + 1)
    np.testing.assert_allclose(v, other, atol=1e-6)


def test_dropped_condition_uses_the_null_embedding(tiny):
    _, variables, apply = tiny
    # move every weight off its init so that the condition reaches the output
    rng = np.random.default_rng(3)
    params = jax.tree.map(
        lambda w: w + 0.3 * rng.normal(size=w.shape).astype(np.float32), nn.unbox(variables)
    )
    x, t, llm, rep = random_inputs(4)
    run = lambda llm, rep, drop, t=t: apply(params, x, t, llm, rep, drop_condition=drop)
    # not a constant shift: the input LayerNorms would remove it
    llm2, rep2 = llm * 2 + jnp.arange(H_LLM), rep[::-1]
    kept, dropped = jnp.zeros(3, bool), jnp.ones(3, bool)
    assert float(jnp.max(jnp.abs(run(llm, rep, kept) - run(llm2, rep, kept)))) > 1e-3
    assert float(jnp.max(jnp.abs(run(llm, rep, kept) - run(llm, rep2, kept)))) > 1e-3
    np.testing.assert_array_equal(run(llm, rep, dropped), run(llm2, rep2, dropped))
    # per example: only the dropped row ignores its condition
    mixed = jnp.array([False, True, False])
    a, b = run(llm, rep, mixed), run(llm2, rep, mixed)
    assert bool(jnp.all((jnp.abs(a - b).max(axis=(1, 2)) > 0) == ~mixed))
    # the time still matters when the condition is dropped
    moved_t = run(llm, rep, dropped, t=1 - t)
    assert float(jnp.max(jnp.abs(moved_t - run(llm, rep, dropped)))) > 1e-3
    # training without a mask: rng-driven drop, all rows dropped with probability 1
    always = PatchFlowHead(**TINY, cond_drop_prob=1.0)
    rngs = {"dropout": jax.random.key(5)}
    by_rng = jax.jit(lambda *a: always.apply(params, *a, train=True, rngs=rngs))(x, t, llm, rep)
    np.testing.assert_allclose(by_rng, run(llm, rep, dropped), atol=1e-5)


def toy_data(rng, shape):
    """Two classes (one-hot in the LLM state), each a tight Gaussian patch around +-1.5."""
    label = rng.integers(0, 2, shape)
    x1 = np.where(label == 0, 1.5, -1.5)[..., None, None] + 0.1 * rng.normal(size=shape + (P, D))
    llm = np.eye(H_LLM)[label]
    rep = rng.normal(size=shape + (H_REPR,))
    return tuple(jnp.asarray(a, jnp.float32) for a in (x1, llm, rep)), label


def test_flow_head_learns_a_conditional_toy_distribution(tiny):
    head = PatchFlowHead(**TINY, cond_drop_prob=0.1)
    params = nn.unbox(tiny[1])
    tx = optax.adam(3e-3)
    steps, batch = 300, 128
    # data drawn up front with numpy: random ops inside jit are slow to compile on CPU
    rng = np.random.default_rng(6)
    train_data, _ = toy_data(rng, (steps, batch))

    def loss_fn(params, data, key):
        x1, llm, rep = data
        k_loss, k_drop = jax.random.split(key)
        velocity = lambda x_t, t: head.apply(
            params, x_t, t, llm, rep, train=True, rngs={"dropout": k_drop}
        )
        return flow_matching_loss(velocity, x1, jnp.ones(x1.shape[:1], bool), k_loss)

    @jax.jit
    def train(params):
        def step(carry, data_and_key):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, *data_and_key)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(jax.random.key(7), steps)
        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), (train_data, keys))
        return params, losses

    params, losses = train(params)
    # fresh batches every step: the training loss is a held-out loss before each update
    start, end = float(losses[:10].mean()), float(losses[-50:].mean())
    assert end < 0.5 * start, (start, end)

    # the trained head, sampled per class, lands on the right side
    (_, llm, rep), label = toy_data(np.random.default_rng(9), (64,))
    velocity = lambda x, t, drop: head.apply(params, x, t, llm, rep, drop_condition=drop)
    sample = jax.jit(lambda noise: sample_flow(velocity, noise, num_steps=8))
    x = np.asarray(sample(jnp.asarray(np.random.default_rng(10).normal(size=(64, P, D)))))
    np.testing.assert_allclose([x[label == c].mean() for c in (0, 1)], [1.5, -1.5], atol=0.5)


# --- losses ----------------------------------------------------------------------------------
def test_flow_time_schedules_and_interpolation():
    t_u = sample_flow_time(jax.random.key(0), (4000,))
    t_ln = sample_flow_time(jax.random.key(0), (4000,), "logit_normal")
    for t in (t_u, t_ln):
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    # logit-normal(0, 1) puts more mass in the middle than uniform
    middle = lambda t: float(jnp.mean(jnp.abs(t - 0.5) < 0.25))
    assert middle(t_ln) > middle(t_u) + 0.1
    with pytest.raises(ValueError):
        sample_flow_time(jax.random.key(0), (2,), "cosine")
    noise, x1 = jnp.zeros((2, P, D)), jnp.ones((2, P, D))
    np.testing.assert_allclose(
        interpolate(noise, x1, jnp.array([0.0, 0.25])), jnp.array([0.0, 0.25])[:, None, None] * x1
    )


def test_flow_loss_is_zero_for_the_true_velocity_and_ignores_padding():
    x1 = jax.random.normal(jax.random.key(0), (2, 3, P, D))
    mask = jnp.array([[True, True, False], [True, False, False]])
    key = jax.random.key(1)
    # with a deterministic x1, the exact velocity is (x1 - x_t) / (1 - t)
    exact = lambda x_t, t: (x1 - x_t) / (1 - t)[..., None, None]
    assert float(flow_matching_loss(exact, x1, mask, key)) < 1e-8
    # the noise-only velocity -x_t/(1-t) misses by x1 / (1 - t): a positive loss
    zero_data = lambda x_t, t: -x_t / (1 - t)[..., None, None]
    assert float(flow_matching_loss(zero_data, x1, mask, key)) > 0.5
    # padded patches: any data, even NaN predictions, change nothing
    junk = jnp.where(mask[..., None, None], x1, 100.0)
    nan_pad = lambda x_t, t: jnp.where(mask[..., None, None], 0.0, jnp.nan) * x_t
    assert float(flow_matching_loss(nan_pad, x1, mask, key)) == pytest.approx(
        float(flow_matching_loss(lambda x_t, t: 0.0 * x_t, junk, mask, key))
    )
    assert float(flow_matching_loss(zero_data, junk, mask, key)) == pytest.approx(
        float(flow_matching_loss(zero_data, x1, mask, key))
    )
    assert float(flow_matching_loss(exact, x1, jnp.zeros_like(mask), key)) == 0.0


def test_stop_head_and_masked_stop_loss():
    state = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, H_LLM)), jnp.float32)
    logits, _ = jax.jit(StopHead(hidden=8).init_with_output)(jax.random.key(1), state)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    linear, _ = jax.eval_shape(StopHead(hidden=0).init_with_output, jax.random.key(1), state)
    assert linear.shape == (2, 5)

    targets = np.array([[0, 0, 1, 0, 0], [0, 0, 0, 0, 1]])
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    loss_and_grad = jax.jit(jax.value_and_grad(stop_loss))
    loss, grad = loss_and_grad(logits, targets, mask, 1.0)
    z = np.asarray(logits, np.float64)
    pos, neg = np.log1p(np.exp(-z)), np.log1p(np.exp(z))  # -log p, -log(1 - p)
    np.testing.assert_allclose(loss, (targets * pos + (1 - targets) * neg)[mask].mean(), rtol=1e-5)
    # masked positions get no gradient, and changing them changes nothing
    assert np.all(grad[~mask] == 0) and np.all(grad[mask] != 0)
    junk, _ = loss_and_grad(jnp.where(mask, logits, 50.0), targets, mask, 1.0)
    np.testing.assert_allclose(junk, loss, rtol=1e-6)
    # pos_weight scales only the positive terms
    weighted, _ = loss_and_grad(logits, targets, mask, 3.0)
    expected = (3.0 * targets * pos + (1 - targets) * neg)[mask].mean()
    np.testing.assert_allclose(weighted, expected, rtol=1e-5)
