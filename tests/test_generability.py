"""The generability measure: a smooth latent sequence is easier to continue than white noise."""

import numpy as np

from f3_jax.metrics.generability import GenerabilityBudget, generability

BUDGET = GenerabilityBudget(
    patch_frames=2, context_patches=4, steps=150, batch_size=64, hidden=64, seed=0
)


def _smooth(rng, n_seqs: int, frames: int, dim: int) -> list[np.ndarray]:
    """Sums of slow sinusoids with random frequencies and phases per channel."""
    t = np.arange(frames)[:, None]
    seqs = []
    for _ in range(n_seqs):
        freq = rng.uniform(0.01, 0.05, size=(3, dim))
        phase = rng.uniform(0, 2 * np.pi, size=(3, dim))
        seqs.append(sum(np.sin(2 * np.pi * freq[k] * t + phase[k]) for k in range(3)))
    return seqs


def test_smooth_sequence_scores_lower_than_white_noise_of_the_same_variance():
    rng = np.random.default_rng(0)
    smooth = _smooth(rng, 12, 96, 6)
    std = np.concatenate(smooth).std(axis=0)
    noise = [std * rng.standard_normal(s.shape) for s in smooth]
    assert np.allclose(np.concatenate(noise).std(axis=0), std, rtol=0.1)
    s, n = generability(smooth, BUDGET), generability(noise, BUDGET)
    assert s["num_train"] == n["num_train"] > 0 and s["num_test"] == n["num_test"] > 0
    assert s["nmse"] < 0.3 < 0.9 < n["nmse"]  # noise: no better than the mean
    assert s["copy_nmse"] < 1.0 < n["copy_nmse"]  # copying a noise frame doubles the error
    # the normalization: the same sequences at another scale score the same
    scaled = generability([100.0 * x + 3.0 for x in smooth], BUDGET)
    np.testing.assert_allclose(scaled["nmse"], s["nmse"], rtol=1e-3)


def test_deterministic_and_nan_when_too_short():
    rng = np.random.default_rng(1)
    seqs = _smooth(rng, 4, 40, 3)
    assert generability(seqs, BUDGET) == generability(seqs, BUDGET)
    short = generability([np.zeros((3, 3))] * 5, BUDGET)  # fewer than two patches each
    assert np.isnan(short["nmse"]) and short["num_train"] == 0
