"""Stage-1 model tests: shapes and frame rates, bottleneck statistics and noise, parameter
partitioning, receptive field, discriminators. Small widths so the file runs in seconds."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3_jax import parallel
from f3_jax.dsp import stfts
from f3_jax.models.autoencoder import Autoencoder, Decoder, Encoder, receptive_field
from f3_jax.models.bottleneck import NormalizedNoisyBottleneck
from f3_jax.models.discriminators import Discriminators
from f3_jax.models.layers import WNConv1d, WNConvTranspose1d, strided_padding
from f3_jax.stages.autoencoder.config import defaults as autoencoder_defaults


def small_config(strides=(2, 4, 6, 10), sample_rate=24000, **bottleneck):
    c = autoencoder_defaults()
    c.sample_rate = sample_rate
    c.model.channels = 4
    c.model.channel_mults = (1,) * (len(strides) + 1)
    c.model.strides = tuple(strides)
    c.model.hop = math.prod(strides)
    c.model.latent_dim = 8
    c.model.dilations = (1, 3)
    for k, v in bottleneck.items():
        c.bottleneck[k] = v
    return c


def init(model, length, batch=2):
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    return jax.jit(model.init)(rngs, jnp.zeros((batch, length)))


def abstract_init(model, length, batch=2):
    """Shapes only: eval_shape traces without compiling, which keeps shape tests fast."""
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    return jax.eval_shape(model.init, rngs, jnp.zeros((batch, length)))


@pytest.mark.parametrize(
    "strides,sample_rate,rate", [((2, 4, 6, 10), 24000, 50), ((2, 4, 5, 8), 16000, 50)]
)
def test_frame_rate_and_lengths(strides, sample_rate, rate):
    c = small_config(strides, sample_rate)
    model = Autoencoder.from_config(c)
    assert model.hop * rate == sample_rate
    wav = jnp.zeros((2, sample_rate // 10))
    variables = abstract_init(model, wav.shape[1])
    out = jax.eval_shape(model.apply, variables, wav)
    assert out["z"].shape == (2, rate // 10, 8)
    assert out["wav"].shape == wav.shape
    z = jnp.ones((1, 3, 8))
    decoded = jax.eval_shape(
        lambda v, z: model.apply(v, z, method=Autoencoder.decode), variables, z
    )
    assert decoded.shape == (1, 3 * model.hop)


@pytest.mark.parametrize("strides", [(3,), (2, 5), (4, 3)])
def test_encoder_decoder_exact_lengths(strides):
    hop = math.prod(strides)
    enc = Encoder(4, (1,) * (len(strides) + 1), strides, 6, dilations=(1,))
    dec = Decoder(4, (1,) * (len(strides) + 1), strides, dilations=(1,))
    x = jnp.zeros((1, 7 * hop))
    h, _ = jax.eval_shape(enc.init_with_output, jax.random.key(0), x)
    assert h.shape == (1, 7, 6)
    y, _ = jax.eval_shape(dec.init_with_output, jax.random.key(0), h)
    assert y.shape == (1, 7 * hop)
    with pytest.raises(ValueError):
        jax.eval_shape(enc.init, jax.random.key(0), jnp.zeros((1, 7 * hop + 1)))


def test_weight_norm_gain_starts_at_norm():
    variables = WNConv1d(5, 3).init(jax.random.key(0), jnp.zeros((1, 8, 4)))
    p = nn.unbox(variables["params"])
    np.testing.assert_allclose(p["g"], np.linalg.norm(p["v"].reshape(-1, 5), axis=0), rtol=1e-6)


def test_every_parameter_is_logically_partitioned():
    c = small_config((2, 3), sample_rate=600, norm="batch")
    for tree in (
        abstract_init(Autoencoder.from_config(c), 60),
        jax.eval_shape(Discriminators.from_config(c).init, jax.random.key(0), jnp.zeros((1, 1100))),
    ):
        leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        assert leaves
        for leaf in leaves:
            assert isinstance(leaf, nn.LogicallyPartitioned), leaf
            assert len(leaf.names) == len(leaf.value.shape)
            assert set(leaf.names) <= set(parallel.LOGICAL_AXES), leaf.names
            assert leaf.value.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params():
    c = small_config((2, 3))
    c.compute_dtype = "bfloat16"
    model = Autoencoder.from_config(c)
    variables = abstract_init(model, 60)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(variables)))
    out = jax.eval_shape(model.apply, variables, jnp.ones((2, 60)))
    assert out["wav"].dtype == jnp.bfloat16 and out["wav"].shape == (2, 60)


def bottleneck_apply(norm="layer", noise="uniform", train=True, h=None, batch=512, **kw):
    module = NormalizedNoisyBottleneck(16, norm=norm, noise=noise, **kw)
    if h is None:
        h = 3.0 + 2.0 * jax.random.normal(jax.random.key(5), (batch, 4, 16))
    variables = jax.jit(module.init)({"params": jax.random.key(0), "noise": jax.random.key(1)}, h)
    mutable = ["batch_stats"] if norm == "batch" else False
    apply = jax.jit(
        lambda v, h: module.apply(
            v, h, train=train, rngs={"noise": jax.random.key(2)}, mutable=mutable
        )
    )
    out = apply(variables, h)
    return (out, variables) if norm != "batch" else (out[0], out[1])


def test_layer_norm_latents_zero_mean_unit_rms_per_frame():
    (z, z_noisy, sigma), _ = bottleneck_apply("layer", "none", train=False)
    np.testing.assert_allclose(jnp.mean(z, -1), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(z**2, -1)), 1.0, atol=1e-3)
    assert jnp.array_equal(z, z_noisy) and jnp.all(sigma == 0)


def test_batch_norm_train_and_running_stats():
    module = NormalizedNoisyBottleneck(16, norm="batch", noise="none", momentum=0.5)
    h = 3.0 + 2.0 * jax.random.normal(jax.random.key(5), (64, 8, 16))
    variables = module.init(jax.random.key(0), h)
    assert set(variables) == {"params", "batch_stats"}
    (z, _, _), updates = module.apply(variables, h, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(jnp.mean(z, (0, 1)), 0.0, atol=1e-4)
    np.testing.assert_allclose(jnp.std(z, (0, 1)), 1.0, atol=1e-3)
    stats = nn.unbox(updates["batch_stats"])
    assert not np.allclose(stats["mean"], 0.0)  # moved halfway towards the batch mean
    # inference uses the running statistics: a different batch is not re-centered.
    variables = {**variables, "batch_stats": updates["batch_stats"]}
    z_eval, z_eval_noisy, _ = module.apply(variables, h[:1], train=False)
    assert jnp.array_equal(z_eval, z_eval_noisy)
    z_eval2, _, _ = module.apply(variables, h[:1] + 10.0, train=False)
    assert not np.allclose(jnp.mean(z_eval2), jnp.mean(z_eval), atol=0.5)


def test_noise_only_in_training_and_deterministic_inference():
    h = jax.random.normal(jax.random.key(5), (8, 4, 16))
    (z, z_noisy, sigma), _ = bottleneck_apply("layer", "uniform", train=False, h=h)
    assert jnp.array_equal(z, z_noisy) and jnp.all(sigma == 0)
    (z2, _, _), _ = bottleneck_apply("layer", "uniform", train=False, h=h)
    assert jnp.array_equal(z, z2)
    (zt, zt_noisy, sigma), _ = bottleneck_apply("layer", "uniform", train=True, h=h)
    assert jnp.allclose(zt, z, atol=1e-6)
    assert not jnp.allclose(zt_noisy, zt)
    # the noise of each example has the scale of its own sigma.
    per_example = jnp.std(zt_noisy - zt, axis=(1, 2))
    np.testing.assert_allclose(per_example, sigma, rtol=0.35, atol=0.02)


@pytest.mark.slow  # keeps the default run under 15 min on 2 cores
def test_sigma_distributions():
    (_, _, s), _ = bottleneck_apply("layer", "uniform", noise_max=0.5, batch=4096)
    assert s.shape == (4096,) and float(s.min()) >= 0.0 and float(s.max()) <= 0.5
    assert abs(float(s.mean()) - 0.25) < 0.015 and len(np.unique(s)) > 4000
    (_, _, s), _ = bottleneck_apply("layer", "half_normal", noise_scale=0.3, batch=4096)
    assert float(s.min()) >= 0.0
    assert abs(float(s.mean()) - 0.3 * math.sqrt(2 / math.pi)) < 0.015
    (z, z_noisy, s), _ = bottleneck_apply("layer", "none", batch=16)
    assert jnp.all(s == 0) and jnp.array_equal(z, z_noisy)


def test_autoencoder_train_call_shapes():
    c = small_config((2, 3))
    model = Autoencoder.from_config(c)
    variables = abstract_init(model, 60)
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, rngs={"noise": jax.random.key(3)}),
        variables,
        jnp.ones((3, 60)),
    )
    assert out["sigma"].shape == (3,) and out["z_noisy"].shape == (3, 10, 8)
    c = small_config((2, 3), norm="batch")
    model = Autoencoder.from_config(c)
    variables = abstract_init(model, 60)
    train = lambda v, x: model.apply(
        v, x, train=True, rngs={"noise": jax.random.key(3)}, mutable=["batch_stats"]
    )
    out, upd = jax.eval_shape(train, variables, jnp.ones((3, 60)))
    assert "batch_stats" in upd and out["wav"].shape == (3, 60)


@pytest.mark.slow  # keeps the default run under 15 min on 2 cores
def test_receptive_field_bounds_dependence():
    """Samples (frames) beyond half the receptive field from a frame (sample) never reach it."""
    c = small_config((2, 3), sample_rate=600)
    c.bottleneck.noise = "none"
    model = Autoencoder.from_config(c)
    hop = model.hop
    enc_rf, dec_rf = receptive_field(c)
    frames = max(enc_rf // hop, dec_rf) + 8
    variables = init(model, frames * hop, batch=1)
    wav = jax.random.normal(jax.random.key(1), (3, frames * hop))
    t = frames // 2
    # variables as arguments (not closed-over constants): XLA compiles this much faster.
    encode = jax.jit(lambda v, w: model.apply(v, w, method=Autoencoder.encode)["z"])
    decode = jax.jit(lambda v, z: model.apply(v, z, method=Autoencoder.decode))
    pos = np.arange(frames * hop)
    far = (pos < t * hop - enc_rf // 2) | (pos >= (t + 1) * hop + enc_rf // 2)
    near = pos == t * hop - enc_rf // 4
    other = 5.0 * jax.random.normal(jax.random.key(9), wav.shape[1:])
    batch = jnp.stack([wav[0], jnp.where(far, other, wav[0]), jnp.where(near, 3.0, wav[0])])
    z = encode(variables, batch)
    np.testing.assert_allclose(z[1, t], z[0, t], atol=1e-5)
    assert not np.allclose(z[1, 0], z[0, 0], atol=1e-3)  # the far change did reach other frames
    assert not np.allclose(z[2, t], z[0, t], atol=1e-6)  # and the bound is not wildly loose

    far_frames = np.abs(np.arange(frames) - t) > dec_rf // 2
    z_mod = jnp.where(far_frames[None, :, None], -z[:1], z[:1])
    y = decode(variables, jnp.concatenate([z[:1], z_mod]))
    s = t * hop + hop // 2
    np.testing.assert_allclose(y[1, s], y[0, s], atol=1e-5)
    assert not np.allclose(y[1], y[0], atol=1e-3)


def test_discriminators_outputs():
    c = autoencoder_defaults()
    c.discriminator.mpd_channels = 2
    c.discriminator.mpd_max_channels = 8
    c.discriminator.stft_channels = 2
    c.discriminator.stft_fft_sizes = (256, 128)
    disc = Discriminators.from_config(c)
    wav = jax.random.normal(jax.random.key(0), (2, 2400))
    outputs, _ = jax.eval_shape(disc.init_with_output, jax.random.key(1), wav)
    assert len(outputs) == 5 + 2
    for (logits, feats), p in zip(outputs[:5], (2, 3, 5, 7, 11)):
        assert logits.shape[0] == 2 and logits.shape[2] == p and logits.shape[3] == 1
        assert len(feats) == 5 and all(f.shape[2] == p for f in feats)
        assert feats[-1].shape[1] == logits.shape[1]
    for (logits, feats), n in zip(outputs[5:], (256, 128)):
        frames = 1 + 2400 // (n // 4)
        assert logits.shape[:2] == (2, frames) and logits.shape[3] == 1
        assert len(feats) == 4 * 5 and all(f.shape[1] == frames for f in feats)
    c.discriminator.use_mpd = False
    disc = Discriminators.from_config(c)
    outputs, _ = jax.eval_shape(disc.init_with_output, jax.random.key(1), wav)
    assert len(outputs) == 2


def test_discriminators_on_shared_spectra_equal_their_own():
    """The STFT discriminators fed the raw wav's spectra (level normalization applied to them
    by linearity) give the outputs and gradients they give computing their own."""
    c = autoencoder_defaults()
    c.discriminator.use_mpd = False
    c.discriminator.stft_channels = 2
    c.discriminator.stft_fft_sizes = (256, 128)
    disc = Discriminators.from_config(c)
    wav = 0.3 * jax.random.normal(jax.random.key(0), (2, 1200)) + 0.1
    params = jax.jit(disc.init)(jax.random.key(1), wav)

    def loss(w, shared):
        spectra = stfts(w, (128, 256, 512)) if shared else None
        outs = disc.apply(params, w, spectra)
        return sum(jnp.sum(jnp.square(lg)) + sum(jnp.sum(f) for f in fs) for lg, fs in outs)

    want, want_g = jax.jit(jax.value_and_grad(loss), static_argnums=1)(wav, False)
    got, got_g = jax.jit(jax.value_and_grad(loss), static_argnums=1)(wav, True)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-3, atol=1e-3 * np.abs(want_g).max())


@pytest.mark.parametrize("stride", [2, 3, 5])
def test_transposed_conv_matches_scatter_definition(stride):
    layer = WNConvTranspose1d(3, stride)
    x = jax.random.normal(jax.random.key(0), (1, 4, 2))
    y, variables = layer.init_with_output(jax.random.key(1), x)
    p = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
    w = p["g"] * p["v"] / np.linalg.norm(p["v"].reshape(-1, 3), axis=0)
    left = strided_padding(stride)[0]
    expected = np.zeros((4 * stride, 3)) + p["bias"]
    for t in range(4):
        for k in range(2 * stride):
            m = t * stride + k - left
            if 0 <= m < 4 * stride:
                expected[m] += np.asarray(x[0, t]) @ w[k]
    np.testing.assert_allclose(y[0], expected, atol=1e-5)


def test_fast_sin_within_float_rounding_of_sin():
    """Snake's sine on CPU (`fast_sin`): within 1.2e-7 of sin (float32's rounding at 1 is
    6e-8), its derivative cos as closely, over the range activations reach and far past it."""
    from f3_jax.models.layers import fast_sin, snake_sin

    x = np.concatenate([np.linspace(-8, 8, 100_001), np.linspace(-3e4, 3e4, 100_001)])
    x = x.astype(np.float32)
    exact = x.astype(np.float64)
    np.testing.assert_allclose(jax.jit(fast_sin)(x), np.sin(exact), rtol=0, atol=1.2e-7)
    grad = jax.jit(jax.vmap(jax.grad(fast_sin)))(x)
    np.testing.assert_allclose(grad, np.cos(exact), rtol=0, atol=1.2e-7)
    assert snake_sin(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16  # jnp.sin there


def test_valid_rows_make_zero_padding_invisible():
    """Encoder and decoder given `valid` give each row's signal part as a pass without the
    padding would: rows of one batch padded to one length, with different signal lengths."""
    c = small_config(strides=(2, 3), sample_rate=300)  # a short hop: the file runs in seconds
    model = Autoencoder.from_config(c)
    hop, frames = model.hop, (9, 4)
    rng = np.random.default_rng(0)
    # Random weights in the model's tree (eval_shape: no init to compile), biases included:
    # with zero biases the padding would be invisible anyway.
    shapes = nn.unbox(abstract_init(model, 12 * hop))
    variables = jax.tree.map(
        lambda x: (0.3 * rng.standard_normal(x.shape) + 1.0).astype(np.float32), shapes
    )
    encode = jax.jit(lambda v, x, n: model.apply(v, x, valid=n, method=Autoencoder.encode)["z"])
    decode = jax.jit(lambda v, z, n: model.apply(v, z, n, method=Autoencoder.decode))
    wav = np.zeros((2, 12 * hop), np.float32)
    z = np.zeros((2, 12, 8), np.float32)
    for row, n in enumerate(frames):
        wav[row, : n * hop] = rng.standard_normal(n * hop)
        z[row, :n] = rng.standard_normal((n, 8))
    z_padded = encode(variables, wav, np.array(frames) * hop)
    wav_padded = decode(variables, z, np.array(frames))
    for row, n in enumerate(frames):
        alone = encode(variables, wav[row : row + 1, : n * hop], np.array([n * hop]))[0]
        np.testing.assert_allclose(z_padded[row, :n], alone, atol=1e-5)
        alone = decode(variables, z[row : row + 1, :n], np.array([n]))[0]
        scale = np.abs(alone).max()  # float rounding of other shapes: relative to the signal
        np.testing.assert_allclose(wav_padded[row, : n * hop] / scale, alone / scale, atol=1e-5)
    # Without `valid` the padding shows in the last frames: the test can tell.
    unmasked = jax.jit(lambda v, z: model.apply(v, z, method=Autoencoder.decode))(variables, z)
    assert np.abs(unmasked[1, : 4 * hop] - wav_padded[1, : 4 * hop]).max() > 1e-3 * scale
