"""Tokenizer: chunked encode/decode equals one-shot processing; batching, resampling, loading,
streams and files, representations, CLI.

The model is the tiny 8 kHz config (hop 40) with random weights. Shapes are chosen so that the
whole file compiles few programs (each costs seconds on CPU): a 180-frame input is 8 windows of
34 (encoder) or 40 (decoder) frames, i.e. two batches of 4 windows.
"""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import soxr

from f3_jax import checkpoint, exports
from f3_jax.data.audio_io import load_audio
from f3_jax.inference.representer import Representer
from f3_jax.inference.tokenizer import Tokenizer
from f3_jax.inference.windows import padded_length, plan_windows, ready_windows, window_length
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.models.llm import stack_layer_params
from f3_jax.models.representation import RepresentationEncoder
from f3_jax.stages.representation.config import defaults as representation_defaults
from tests.ae_fixtures import tiny_ae_config

HOP = 40
LONG_FRAMES = 180  # 8 windows with chunk_frames=24 (kept cores of 24 frames)
CHUNK = 24
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_variables(config, seed: int = 0) -> dict:
    """Random weights in the model's variable tree, drawn with numpy.

    The tree comes from `init` under eval_shape (instant) rather than a real init (tens of
    seconds on a loaded CPU). Biases and Snake alphas are random too: with zero biases,
    zero-padding the input would look the same as padding inside the convolutions, and the
    end-of-signal tests would not tell them apart.
    """
    model = Autoencoder.from_config(config)
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    shapes = nn.unbox(jax.eval_shape(model.init, rngs, jnp.zeros((1, HOP))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("g", "alpha"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name == "bias":
            return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    config = tiny_ae_config()
    return Tokenizer(config, random_variables(config), chunk_frames=CHUNK, batch_windows=4)


@pytest.fixture(scope="module")
def oneshot(tok):
    """Whole-signal encode and decode with the plain model: the reference."""
    enc = jax.jit(lambda v, x: tok.model.apply(v, x, method=Autoencoder.encode)["z"])
    dec = jax.jit(lambda v, z: tok.model.apply(v, z, method=Autoencoder.decode))
    return (
        lambda wav: np.asarray(enc(tok.variables, wav[None]))[0],
        lambda z: np.asarray(dec(tok.variables, z[None]))[0],
    )


def noise(n: int, seed: int) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def latents(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((frames, 8)).astype(np.float32)


def test_window_plan_tiles_and_keeps_context():
    length = window_length(24, 5)
    assert length == 34
    for total in [1, 21, 22, 33, 34, 35, 100, 180]:
        windows = plan_windows(total, length, 5)
        kept = np.concatenate([np.arange(w.keep_start, w.keep_end) for w in windows])
        np.testing.assert_array_equal(kept, np.arange(total))  # each frame kept exactly once
        if total <= length:  # one window: the signal, padded to a length of the ladder
            (w,) = windows
            assert (w.start, w.valid, w.length) == (0, total, padded_length(total, length))
            continue
        for w in windows:
            assert 0 <= w.start and w.start + w.length <= total and w.valid == w.length
            # context on each side, unless that side is the signal's own end
            assert w.keep_start - w.start >= 5 or w.start == 0
            assert w.start + w.length - w.keep_end >= 5 or w.start + w.length == total
        assert {w.length for w in windows} == {length}


def test_padded_lengths_are_few_and_close():
    padded = {padded_length(total, 562) for total in range(1, 563)}
    assert len(padded) == 16 and max(padded) == 562
    for total in range(1, 563):
        assert 0 <= padded_length(total, 562) - total < 562 / 16
    assert padded_length(500, 562) == 504  # a 10 s clip at 50 Hz: 0.8 % padding


def test_context_covers_receptive_field(tok, oneshot):
    """Changing inputs outside the context leaves a frame's output bit-for-bit unchanged."""
    encode, decode = oneshot
    wav, n = noise(LONG_FRAMES * HOP, 0), LONG_FRAMES // 2
    far = np.ones(len(wav), bool)
    far[(n - tok.enc_context) * HOP : (n + tok.enc_context + 1) * HOP] = False
    moved = np.where(far, noise(len(wav), 1), wav)
    np.testing.assert_array_equal(encode(wav)[n], encode(moved)[n])
    z = latents(LONG_FRAMES, 2)
    far = np.ones(LONG_FRAMES, bool)
    far[n - tok.dec_context : n + tok.dec_context + 1] = False
    moved = np.where(far[:, None], latents(LONG_FRAMES, 3), z)
    frame = slice(n * HOP, (n + 1) * HOP)
    np.testing.assert_array_equal(decode(z)[frame], decode(moved)[frame])


def test_chunked_encode_equals_oneshot(tok, oneshot):
    wav = noise(LONG_FRAMES * HOP - 17, 4)  # not a multiple of hop: encode pads with zeros
    shapes = []
    inner = tok._encode
    tok._encode = lambda v, x, valid: shapes.append(x.shape) or inner(v, x, valid)
    try:
        z = tok.encode(wav)
    finally:
        tok._encode = inner
    assert shapes == [(4, 34 * HOP)] * 2  # chunking happened, in one compiled shape
    reference = oneshot[0](np.pad(wav, (0, 17)))
    assert z.shape == (LONG_FRAMES, 8)
    np.testing.assert_allclose(z, reference, atol=1e-5, rtol=0)


def test_chunked_decode_equals_oneshot(tok, oneshot):
    z = latents(LONG_FRAMES, 5)
    wav = tok.decode(z)
    assert wav.shape == (LONG_FRAMES * HOP,)
    reference = oneshot[1](z)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(wav / scale, reference / scale, atol=1e-5, rtol=0)


def test_a_short_signal_is_one_padded_window_equal_to_oneshot(tok, oneshot):
    """Shorter than a window: one call on the signal padded with zeros to the ladder's next
    length, exact because the codec zeroes its activations past the signal (zero_past)."""
    shapes, inner = [], tok._decode
    tok._decode = lambda v, z, valid: shapes.append((z.shape, list(valid))) or inner(v, z, valid)
    try:
        for frames in (1, 13, 29, 34):
            z = latents(frames, 20 + frames)
            reference = oneshot[1](z)
            scale = np.abs(reference).max()
            np.testing.assert_allclose(tok.decode(z) / scale, reference / scale, atol=1e-5)
            assert shapes[-1] == ((1, padded_length(frames, tok.dec_length), 8), [frames])
            wav = noise(frames * HOP, 40 + frames)
            np.testing.assert_allclose(tok.encode(wav), oneshot[0](wav), atol=1e-5, rtol=0)
    finally:
        tok._decode = inner
    # The padding is really there and really masked: with it counted as signal the end moves.
    z = latents(29, 49)
    padded = np.zeros((1, padded_length(29, tok.dec_length), 8), np.float32)
    padded[0, :29] = z
    unmasked = np.asarray(inner(tok.variables, padded, np.array([padded.shape[1]])))[0, :29]
    assert np.abs(unmasked.reshape(-1) - oneshot[1](z)).max() > 1e-3


def test_batches_equal_single_calls(tok):
    # 8 windows of 34 frames; 31 and 10 frames: one padded window each
    wavs = [noise(LONG_FRAMES * HOP, 6), noise(30 * HOP + 5, 7), noise(10 * HOP, 8)]
    together = tok.encode(wavs)
    assert isinstance(together, list)
    for wav, z in zip(wavs, together):
        np.testing.assert_allclose(z, tok.encode(wav), atol=1e-6)
    assert together[1].shape == (31, 8)
    stacked = tok.encode(np.stack([wavs[0], wavs[0][::-1]]))
    assert stacked.shape == (2, LONG_FRAMES, 8)
    np.testing.assert_allclose(stacked[0], together[0], atol=1e-6)

    zs = [latents(LONG_FRAMES, 9), latents(50, 10)]  # 8 and 2 windows of 40: one shape
    decoded = tok.decode(zs)
    for z, wav in zip(zs, decoded):
        assert wav.shape == (len(z) * HOP,)
        np.testing.assert_allclose(wav, tok.decode(z), atol=1e-5)
    assert tok.decode(np.stack([zs[0]] * 2)).shape == (2, LONG_FRAMES * HOP)


def test_encode_resamples(tok):
    wav16k = noise(2 * LONG_FRAMES * HOP, 12)
    resampled = soxr.resample(wav16k, 16000, 8000).astype(np.float32)
    np.testing.assert_array_equal(tok.encode(wav16k, sample_rate=16000), tok.encode(resampled))


def test_ready_windows_are_the_plan():
    """Windows taken as the signal arrives, in any blocks, are the whole signal's plan."""
    length, rng = window_length(24, 5), np.random.default_rng(0)
    for total in [1, 21, 22, 33, 34, 35, 57, 100, 180]:
        for _ in range(6):
            arrivals = np.sort(rng.integers(0, total + 1, size=rng.integers(0, 8)))
            got = []
            for available, final in [*((int(a), False) for a in arrivals), (total, True)]:
                next_keep = got[-1].keep_end if got else 0
                got += ready_windows(available, final, length, 5, next_keep)
            assert got == plan_windows(total, length, 5), (total, arrivals)


def blocks(x: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """x cut into consecutive blocks of the given sizes, repeated (0 gives empty blocks)."""
    out, i = [], 0
    for n in itertools.cycle(sizes):
        if i >= len(x):
            return out
        out.append(x[i : i + n])
        i += n


def test_streams_equal_in_memory(tok):
    wav16k = noise(2 * LONG_FRAMES * HOP - 33, 14)  # 180 frames at 8 kHz, the last one padded
    want = tok.encode(wav16k, sample_rate=16000)
    got = list(tok.encode_stream(blocks(wav16k, (1, 777, 0, 5000, 3)), sample_rate=16000))
    assert len(got) > 1  # kept frames came out before the input ended
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-6, rtol=0)
    z = latents(LONG_FRAMES, 15)
    got = list(tok.decode_stream(blocks(z, (1, 7, 0, 50))))
    assert len(got) > 1
    np.testing.assert_allclose(np.concatenate(got), tok.decode(z), atol=1e-5, rtol=0)


def test_files_equal_in_memory(tok, tmp_path):
    src, npy, out = tmp_path / "in.flac", tmp_path / "z.npy", tmp_path / "out.wav"
    sf.write(src, noise(2 * LONG_FRAMES * HOP - 33, 16), 16000, subtype="PCM_24")
    assert tok.encode_file(src, npy) == (LONG_FRAMES, 8)
    z = np.load(npy)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, tok.encode(load_audio(src, 8000)), atol=1e-6, rtol=0)
    assert tok.decode_file(npy, out) == LONG_FRAMES * HOP
    wav, rate = sf.read(out, dtype="float32")
    assert rate == 8000
    np.testing.assert_allclose(wav, np.clip(tok.decode(z), -1, 1), atol=1 / 16384, rtol=0)


def repr_tokenizer(tok: Tokenizer, params: dict | None = None, **encoder) -> Tokenizer:
    """`tok` (its compiled autoencoder shared) plus a tiny representation encoder, with random
    weights unless `params` are given."""
    config = representation_defaults()
    config.encoder.update(width=16, depth=2, num_heads=4, num_kv_heads=2, head_dim=4, mlp_dim=32)
    config.encoder.update(encoder)
    if params is None:
        model = RepresentationEncoder.from_config(config)
        z, mask = jnp.zeros((1, 8, 8)), jnp.ones((1, 8))
        params = nn.unbox(jax.jit(lambda: model.init(jax.random.key(3), z, mask))())["params"]
    rtok = copy.copy(tok)
    rtok.representer = Representer(config, {"params": {"encoder": params}}, chunk_frames=16)
    return rtok


def test_causal_represent_in_chunks_equals_whole(tok, tmp_path):
    """Chunks on the KV cache equal one pass over the whole input: in memory, streamed (one
    cache size, then a cache grown from 128 to 256 frames), and from a file."""
    rtok = repr_tokenizer(tok)
    wavs = [noise(LONG_FRAMES * HOP, 17), noise(30 * HOP + 5, 18)]
    want = rtok.representer.whole(rtok.encode(wavs), rtok.frames_per_second)
    for got, ref in zip(rtok.represent(wavs), want):
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    src, dst = tmp_path / "in.wav", tmp_path / "r.npy"
    sf.write(src, wavs[0], 8000, subtype="FLOAT")
    assert rtok.represent_file(src, dst) == (LONG_FRAMES, 16)  # a cache of 192 frames
    np.testing.assert_allclose(np.load(dst), want[0], atol=1e-5, rtol=0)
    # The stacked layout (scan_layers) keeps one k and one v array for all layers.
    stacked = stack_layer_params(rtok.representer.params, 2)
    stok = repr_tokenizer(tok, stacked, scan_layers=True)
    got = list(stok.represent_stream(blocks(wavs[0], (1000, 3))))
    assert len(got) > 1
    np.testing.assert_allclose(np.concatenate(got), want[0], atol=1e-5, rtol=0)


def test_bidirectional_represent_stream_sees_the_whole_input(tok):
    rtok = repr_tokenizer(tok, causal=False)
    wav = noise(LONG_FRAMES * HOP, 19)
    got = np.concatenate(list(rtok.represent_stream(blocks(wav, (1000,)))))
    np.testing.assert_allclose(got, rtok.represent(wav), atol=1e-6, rtol=0)


def _save_checkpoint(workdir: str, config, variables: dict, step: int) -> None:
    """A trainer-like state: the generator's params and EMA, plus counters."""
    state = {
        "step": np.int32(step),
        "gen": {
            "params": variables["params"],
            "ema": jax.tree.map(lambda x: 2 * x, variables["params"]),
        },
    }
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    ckpt.save(step, state, None, config)
    ckpt.wait()
    ckpt.close()


def test_from_checkpoint_reads_export(tmp_path):
    config = tiny_ae_config()
    variables = random_variables(config, seed=1)
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_checkpoint(str(tmp_path))
    exports.write(str(tmp_path), variables, config, step=5)
    tok = Tokenizer.from_checkpoint(str(tmp_path), chunk_frames=CHUNK)
    assert tok.config.model.hop == HOP and tok.hop == HOP and tok.sample_rate == 8000
    for got, want in zip(jax.tree.leaves(tok.variables), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(got, want)


def test_from_checkpoint_falls_back_to_orbax(tmp_path):
    config = tiny_ae_config()
    variables = random_variables(config, seed=1)
    workdir = str(tmp_path)
    _save_checkpoint(workdir, config, variables, step=3)
    exports.write(workdir, variables, config, step=5)
    for tok in (Tokenizer.from_checkpoint(workdir, step=3), _without_export(workdir)):
        assert tok.config.model.hop == HOP
        for got, want in zip(jax.tree.leaves(tok.variables), jax.tree.leaves(variables)):
            np.testing.assert_array_equal(got, 2 * want)  # the EMA weights


def _without_export(workdir: str) -> Tokenizer:
    """from_checkpoint after the export is removed: the latest checkpoint."""
    os.remove(os.path.join(workdir, exports.EXPORT_DIR, "config.json"))
    return Tokenizer.from_checkpoint(workdir)


@pytest.mark.slow  # keeps the default run under 15 min on 2 cores
def test_cli_round_trip(tmp_path):
    config = tiny_ae_config()
    exports.write(str(tmp_path), random_variables(config), config, step=1)
    src, npy, out = tmp_path / "in.wav", tmp_path / "z.npy", tmp_path / "out.wav"
    sf.write(src, noise(16000 // 2 + 7, 13), 16000)  # 0.5 s at 16 kHz: resampled to 8 kHz
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    for args in (["encode", src, npy], ["decode", npy, out]):
        cmd = [sys.executable, "-m", "f3_jax.tokenize", *map(str, args), "--workdir", tmp_path]
        result = subprocess.run(list(map(str, cmd)), env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    z = np.load(npy)
    assert z.shape == (101, 8) and z.dtype == np.float32  # ceil(4004 / 40) frames
    wav, rate = sf.read(out)
    assert rate == 8000 and wav.shape == (101 * HOP,)
