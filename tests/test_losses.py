"""Loss and metric tests: zero for identical inputs, ordering, finite gradients on silence,
LSGAN on known values, SI-SDR on a mixture of known SNR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3_jax.dsp import (
    SC_FLOOR_RMS,
    affine_stft,
    magnitude,
    mel_distance,
    spectral_convergence,
    stft,
    stfts,
)
from f3_jax.losses.adversarial import (
    feature_matching_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)
from f3_jax.losses.spectral import multi_resolution_stft_loss, multi_scale_mel_loss
from f3_jax.metrics.audio import si_sdr
from f3_jax.metrics.stft_distance import stft_distance

SR = 16000
WINDOWS, MELS = (64, 256), (10, 40)
FFTS = (256, 128)


def mel(x, y, **kw):
    return multi_scale_mel_loss(x, y, sample_rate=SR, window_sizes=WINDOWS, mel_bins=MELS, **kw)


def mrstft(x, y):
    return multi_resolution_stft_loss(x, y, fft_sizes=FFTS)


@pytest.fixture(scope="module")
def signals():
    k1, k2 = jax.random.split(jax.random.key(0))
    t = jnp.arange(3200) / SR
    x = jnp.sin(2 * jnp.pi * 440 * t)[None] * jnp.array([[1.0], [0.5]])
    x = x + 0.05 * jax.random.normal(k1, x.shape)
    noise = jax.random.normal(k2, x.shape)
    return x, x + 0.03 * noise, x + 0.3 * noise


def test_stft_shape_and_parseval_like_energy():
    x = jax.random.normal(jax.random.key(1), (2, 1000))
    spec = stft(x, 128, 32)
    assert spec.shape == (2, 1 + 1000 // 32, 65) and jnp.iscomplexobj(spec)
    odd = stft(x, 100, 30)  # window not a multiple of hop: gather path
    assert odd.shape == (2, 1 + 1000 // 30, 51)


def test_shared_spectra_give_the_same_losses_and_gradients(signals):
    x, good, _ = signals
    sizes = WINDOWS + FFTS + (512,)  # more sizes than the losses read: extras are ignored
    spec_x = stfts(x, sizes)
    assert sorted(spec_x) == sorted(set(sizes))

    def shared(y):
        spectra = (spec_x, stfts(y, sizes))
        return mel(x, y, spectra=spectra) + multi_resolution_stft_loss(
            x, y, fft_sizes=FFTS, spectra=spectra
        )

    def alone(y):
        return mel(x, y) + mrstft(x, y)

    np.testing.assert_allclose(jax.jit(shared)(good), jax.jit(alone)(good), rtol=1e-6)
    g_shared, g_alone = jax.jit(jax.grad(shared))(good), jax.jit(jax.grad(alone))(good)
    np.testing.assert_allclose(g_shared, g_alone, rtol=1e-4, atol=1e-6 * np.abs(g_alone).max())
    partial = (stfts(x, (64,)), stfts(good, (64,)))  # scales not given are computed
    np.testing.assert_allclose(mel(x, good, spectra=partial), mel(x, good), rtol=1e-6)


def test_affine_stft_is_the_stft_of_the_affine_signal(signals):
    x = signals[0]
    scale, offset = jnp.array([2.0, -0.5]), jnp.array([0.3, 1.0])
    want = stft(scale[:, None] * x + offset[:, None], 256, 64)
    got = affine_stft(stft(x, 256, 64), x.shape[-1], 256, scale, offset)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)
    assert affine_stft(stft(x[:, :100], 256, 64), 100, 256, scale, offset) is None


@pytest.mark.parametrize("loss", [mel, mrstft])
def test_spectral_losses_order(loss, signals):
    x, good, bad = signals
    assert float(loss(x, x)) < 1e-3
    assert 0.0 < float(loss(x, good)) < float(loss(x, bad))


@pytest.mark.parametrize("loss", [mel, mrstft])
def test_spectral_losses_finite_on_silence(loss):
    zeros = jnp.zeros((2, 1600))
    value, grad = jax.value_and_grad(lambda y: loss(zeros, y))(zeros)
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad)))
    grad_ref = jax.grad(lambda x: loss(x, 0.1 * jnp.ones_like(x)))(zeros)
    assert bool(jnp.all(jnp.isfinite(grad_ref)))


STAGE1_FFTS = (2048, 1024, 512, 256)  # the default loss.stft_fft_sizes


def test_stft_loss_on_speech_like_input_is_unchanged_by_the_silence_floor(signals):
    """Values computed before the spectral-convergence floor: above it nothing changed."""
    x, _, bad = signals
    loss = multi_resolution_stft_loss(x, bad, fft_sizes=STAGE1_FFTS)
    np.testing.assert_allclose(float(loss), 9.3921537399292, rtol=1e-6)
    mask = np.ones((2, 3200), np.float32)
    mask[1, 2000:] = 0.0
    np.testing.assert_allclose(
        stft_distance(x, bad, mask=mask), [8.668167114257812, 10.117380142211914], rtol=1e-6
    )


@pytest.mark.parametrize("ref_peak", [0.0, 1e-6])
def test_spectral_convergence_on_a_silent_reference_is_bounded(signals, ref_peak):
    """A silent reference used to divide by ~0 (about 1e6 for this estimate). The floor makes
    the term the estimate's level over SC_FLOOR_RMS, per scale; gradients stay finite."""
    x, _, bad = signals
    ref = ref_peak * x / jnp.max(jnp.abs(x))
    est_rms = float(jnp.sqrt(jnp.mean(jnp.square(bad))))
    for n in STAGE1_FFTS:
        sc = spectral_convergence(
            magnitude(stft(ref, n, n // 4)), magnitude(stft(bad, n, n // 4)), n, eps=1e-5
        )
        assert bool(jnp.all(sc < 1.5 * est_rms / SC_FLOOR_RMS)), (n, sc)
        assert bool(jnp.all(sc > 0.5 * est_rms / SC_FLOOR_RMS)), (n, sc)  # still says "too loud"
    value, grad = jax.value_and_grad(
        lambda y: multi_resolution_stft_loss(ref, y, fft_sizes=STAGE1_FFTS)
    )(bad)
    # 4 scales of about rms / floor (< 300 each here) plus the log term; it was about 1e6
    assert float(value) < 2000.0 and bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(stft_distance(ref, bad) < 2000.0))  # the eval metric shares the floor


def test_mel_distance_per_example_and_mask(signals):
    x, good, bad = signals
    both = jnp.concatenate([good[:1], bad[1:]])
    d = mel_distance(x, both, sample_rate=SR, window_sizes=WINDOWS, mel_bins=MELS)
    assert d.shape == (2,) and float(d[0]) < float(d[1])
    np.testing.assert_allclose(jnp.mean(d), mel(x, both), rtol=1e-6)
    # garbage in the padded half is ignored once masked
    mask = (jnp.arange(3200) < 1600)[None].repeat(2, 0)
    junk = jnp.where(mask, x, 5.0)
    masked = mel_distance(x, junk, sample_rate=SR, window_sizes=WINDOWS, mel_bins=MELS, mask=mask)
    np.testing.assert_allclose(masked, 0.0, atol=1e-6)
    assert bool(
        jnp.all(mel_distance(x, junk, sample_rate=SR, window_sizes=WINDOWS, mel_bins=MELS) > 0.1)
    )


def fake_outputs(logit_value, feats):
    return [
        (jnp.full((2, 3, 1), logit_value), [jnp.full((2, 4), f) for f in feats]) for _ in range(2)
    ]


def test_lsgan_known_values():
    real = fake_outputs(1.0, (0.0, 0.0))
    fake = fake_outputs(0.0, (1.0, 3.0))
    assert float(lsgan_discriminator_loss(real, fake)) == pytest.approx(0.0)
    assert float(lsgan_discriminator_loss(fake, real)) == pytest.approx(2 * (1.0 + 1.0))
    assert float(lsgan_generator_loss(fake)) == pytest.approx(2 * 1.0)
    assert float(lsgan_generator_loss(fake_outputs(0.5, ()))) == pytest.approx(2 * 0.25)
    # L1 mean over layers (|1| and |3| -> 2), summed over the two sub-discriminators
    assert float(feature_matching_loss(real, fake)) == pytest.approx(2 * 2.0)
    assert float(feature_matching_loss(real, real)) == 0.0


def test_si_sdr_self_and_known_snr():
    x = jax.random.normal(jax.random.key(3), (3, 8000))
    assert bool(jnp.all(si_sdr(x, x) > 80.0))
    assert bool(jnp.all(si_sdr(x, 0.3 * x) > 80.0))
    n = jax.random.normal(jax.random.key(4), x.shape)
    n = n - jnp.mean(n, -1, keepdims=True)
    xc = x - jnp.mean(x, -1, keepdims=True)
    n = n - jnp.sum(n * xc, -1, keepdims=True) / jnp.sum(xc * xc, -1, keepdims=True) * xc
    snr = jnp.array([0.0, 10.0, 20.0])
    scale = jnp.sqrt(jnp.sum(xc**2, -1) / jnp.sum(n**2, -1) / 10 ** (snr / 10))
    est = x + scale[:, None] * n
    np.testing.assert_allclose(si_sdr(x, est), snr, atol=0.1)
    np.testing.assert_allclose(si_sdr(x, 2.5 * est), snr, atol=0.1)  # scale invariant
    mask = jnp.arange(9000)[None].repeat(3, 0) < 8000
    padded = jnp.pad(est, ((0, 0), (0, 1000)), constant_values=7.0)
    ref_padded = jnp.pad(x, ((0, 0), (0, 1000)))
    np.testing.assert_allclose(si_sdr(ref_padded, padded, mask), snr, atol=0.1)
