"""Latent cache: latents equal Tokenizer.encode, crops and masks, resume, digest checks, and a
stage-2 step from the cache equals the same step from raw audio."""

import json
import os

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from f3_jax import exports, latent_cache, parallel
from f3_jax.data import DataError, latent_records, records, train_dataset
from f3_jax.data.synthetic import tone, write_record_dir
from f3_jax.exports import file_digest
from f3_jax.inference.tokenizer import Tokenizer
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.stages.latent_trainer import LATENT_KEYS
from f3_jax.stages.representation.trainer import RepresentationTrainer
from tests.ae_fixtures import tiny_ae_config
from tests.repr_fixtures import TEXTS, tiny_repr_config

SR, HOP, CROP = 8000, 40, 3200  # tiny_repr_config: 0.4 s crops, 80 frames
# Shorter than a crop (whole frames, a last frame more or less than half real), a crop exactly,
# longer (cut: the transcript is dropped).
LENGTHS = [1040, 1030, 1010, 3200, 5000, 9000, 2420]
# Windows of 16 + 2 * 5 context frames, up to 64 per call: one encoder shape for the whole cache.
ENCODE = {"chunk_frames": 16, "batch_windows": 64}


def _write_autoencoder(root):
    """repr_fixtures' tiny stage-1 export, its weights drawn in numpy: Flax's init compiles for
    a minute on a loaded CPU, and the cache needs only some fixed autoencoder."""
    config = tiny_ae_config()
    model = Autoencoder.from_config(config)
    keys = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(keys, jnp.zeros((1, 800)), train=False)))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("alpha", "g"):  # Snake frequencies and weight-norm gains
            return np.ones(leaf.shape, np.float32)
        scale = 0.1 if name == "bias" else 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
        return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    exports.write(os.path.join(root, "ae"), variables, config, 0)


def _utts(lengths, prefix, seed):
    rng = np.random.default_rng(seed)
    return [
        {"wav": tone(n / SR, SR, rng), "id": f"{prefix}{i}", "text": TEXTS[i % 4] or f"t {i}"}
        for i, n in enumerate(lengths)
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("latent"))
    corpus, cache = os.path.join(root, "corpus"), os.path.join(root, "cache")
    train = _utts(LENGTHS, "u", 0) + [{"raw": b"not a record"}]
    exact = _utts([CROP] * 8, "e", 1)
    for i, u in enumerate(exact):
        u["text"] = TEXTS[i % 4]  # one in four without transcript
    write_record_dir(corpus, {"train": train, "exact": exact}, sample_rate=SR)
    _write_autoencoder(root)  # write_frozen_models (in tiny_repr_config) keeps it
    config = tiny_repr_config(root, **{"data.path": corpus, "data.latent_cache": cache})
    config.data.read_threads = 1
    info = latent_cache.build(config, ["train", "exact"], group=16, **ENCODE)
    return config, info, {u["id"]: u for u in train[:-1] + exact}


def _cache(config, info):
    return latent_records.open_cache(config.data.latent_cache, info["autoencoder_digest"], HOP)


def _ds(config, info, batch_size, seed=0, cached=True, num_epochs=None, **data):
    cfg = ml_collections.ConfigDict(config.data.to_dict())
    cfg.update(data)
    return train_dataset(
        cfg,
        sample_rate=SR,
        batch_size=batch_size,
        seed=seed,
        process_index=0,
        process_count=1,
        num_epochs=num_epochs,
        latent_cache=_cache(config, info) if cached else None,
    )


def _stored(config, info, split):
    shards, _ = latent_records.split_shards(_cache(config, info), split)
    src = grain.sources.ArrayRecordDataSource(shards)
    return {r.uid: r for r in (latent_records.decode(src[i]) for i in range(len(src)))}


def _audio(u):  # what the records hold: int16 samples
    return records.to_int16(u["wav"]).astype(np.float32) / 32767.0


def test_info_and_latents_equal_tokenizer_encode(built):
    config, info, utts = built
    export = os.path.join(config.autoencoder.workdir, "export")
    assert info["autoencoder_digest"] == file_digest(os.path.join(export, "weights.safetensors"))
    assert (info["hop"], info["latent_dim"], info["sample_rate"]) == (HOP, 8, SR)
    train = info["splits"]["train"]
    assert train["num_examples"] == len(LENGTHS) and train["num_skipped"] == 1
    assert info["splits"]["exact"]["num_examples"] == 8
    stored = _stored(config, info, "train")
    ids = sorted(stored)
    want = Tokenizer.from_checkpoint(config.autoencoder.workdir, **ENCODE).encode(
        [_audio(utts[k]) for k in ids]
    )
    for uid, z in zip(ids, want):
        rec = stored[uid]
        assert rec.latents.shape == (-(-len(utts[uid]["wav"]) // HOP), 8)
        np.testing.assert_array_equal(rec.latents, z)
        assert rec.text == utts[uid]["text"] and rec.num_samples == len(utts[uid]["wav"])


def test_batches_masks_and_dropped_text(built):
    config, info, utts = built
    stored = _stored(config, info, "train")
    n = len(LENGTHS)
    for mode in ("utterance", "random"):
        b = next(iter(_ds(config, info, n, num_epochs=1, crop_mode=mode)))
        assert b["latents"].shape == (n, 80, 8) and b["latents"].dtype == np.float32
        assert b["frame_mask"].shape == (n, 80) and b["num_skipped"] == 0  # skipped in the build
        for z, m, text, uid in zip(b["latents"], b["frame_mask"], b["text"], b["id"]):
            length, rec = len(utts[uid]["wav"]), stored[uid].latents
            valid = min(length // HOP + (length % HOP > HOP // 2), 80)
            assert m.sum() == valid and np.all(m[:valid] == 1)
            assert text == ("" if length > CROP else utts[uid]["text"])
            starts = [s for s in range(len(rec) - valid + 1) if np.array_equal(z, rec[s : s + 80])]
            if length <= CROP:
                np.testing.assert_array_equal(z[: len(rec)], rec)
                assert not z[len(rec) :].any()
            else:
                assert starts and (mode == "random" or starts[0] == 0)
    # Clips shorter than data.min_crop_fraction of a crop are dropped and counted.
    it = iter(_ds(config, info, 1, min_crop_fraction=0.4))
    batches = [next(it) for _ in range(5)]  # the 5th is of the second epoch
    assert {b["id"][0] for b in batches[:4]} == {"u3", "u4", "u5", "u6"}  # 0.4 crops or more
    assert 3 <= batches[4]["num_skipped"] <= 6


def test_resume_yields_the_same_next_batches(built):
    config, info, _ = built
    ds = _ds(config, info, 3, crop_mode="random")
    it = iter(ds)
    for _ in range(3):  # crosses the first epoch boundary (7 good records, batches of 3)
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(3)]
    it2 = iter(ds)
    it2.set_state(state)
    for a in want:
        b = next(it2)
        np.testing.assert_array_equal(a["latents"], b["latents"])
        assert list(a["id"]) == list(b["id"]) and a["num_skipped"] == b["num_skipped"]


def test_missing_or_foreign_cache_is_named(built):
    config, info, _ = built
    root, digest = config.data.latent_cache, info["autoencoder_digest"]
    with pytest.raises(DataError, match=f"{root}.*python -m f3_jax.latent_cache"):
        latent_records.open_cache(root, "0" * 64, HOP)
    with pytest.raises(DataError, match="not of this one"):
        latent_records.open_cache(root, digest[:16] + "0" * 48, HOP)
    with pytest.raises(DataError, match="no split 'valid'.*--splits valid"):
        _ds(config, info, 2, train_split="valid")


def _random_state(trainer):
    """A state of random parameters: both paths need the same state, not a trained or an
    initial one (initial_state's jitted init compiles for ~20 s on a loaded CPU)."""
    rng = np.random.default_rng(0)
    abstract = trainer.abstract_state()
    rand = lambda x: (0.3 * rng.standard_normal(x.shape)).astype(x.dtype)
    zeros = lambda x: np.zeros(x.shape, x.dtype)
    state = {k: jax.tree.map(zeros, v) for k, v in abstract.items()}  # step, counters, Adam
    randomized = [k for k in ("params", "quantizer") if k in abstract]
    return state | {k: jax.tree.map(rand, abstract[k]) for k in randomized}


def test_stage2_step_from_cache_equals_the_step_from_audio(built):
    config, info, _ = built
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.train_split = "exact"
    mesh_cfg = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
    trainer = RepresentationTrainer(config, parallel.make_mesh(mesh_cfg, jax.devices()[:1]))
    assert trainer.latent_cache.info["autoencoder_digest"] == trainer.ae.digest
    cached = next(iter(_ds(config, info, 8, train_split="exact")))
    audio = next(iter(_ds(config, info, 8, cached=False, train_split="exact")))
    assert list(cached["id"]) == list(audio["id"]) and list(cached["text"]) == list(audio["text"])
    state = _random_state(trainer)
    with_text = parallel.global_batch(trainer.host_batch(cached), trainer.mesh)
    trained = {k: state[k] for k in ("step", "rng", "skipped", "params", "opt")}
    # The step variant with the LLM term only traces here: compiling it twice would double the
    # file's time, and it reads the same latents, frame mask and text tokens as the one below.
    with jax.set_mesh(trainer.mesh):
        step = trainer._jitted_step(True, LATENT_KEYS)
        arrays = {k: with_text[k] for k in LATENT_KEYS}  # without the host-side variant flag
        constants = {"quantizer": state["quantizer"]}
        _, m = jax.eval_shape(step, trained, constants, trainer.frozen_weights(), arrays)
    assert "loss/transcript" in m
    losses = []
    for local in (cached, audio):
        local["text"][:] = ""  # the variant without the LLM
        batch = parallel.global_batch(trainer.host_batch(local), trainer.mesh)
        _, metrics = trainer.train_step(state, batch, 0)
        losses.append(jax.device_get(metrics))
    for key in ("loss/total", "loss/rq_mtp", "grad_norm/model"):
        np.testing.assert_allclose(losses[0][key], losses[1][key], rtol=1e-5, err_msg=key)
    # The trainer's own check runs the digest of its autoencoder against the cache's.
    trainer.ae.digest = info["autoencoder_digest"][:16] + "0" * 48
    with pytest.raises(DataError, match="not of this one"):
        type(trainer).latent_cache.func(trainer)
