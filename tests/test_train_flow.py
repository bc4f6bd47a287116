"""Stage 3: flow trainer (frozen modules stay frozen), incremental generation, stop and cap."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from f3_jax import exports, parallel
from f3_jax.inference.generator import Generator
from f3_jax.models.llm import LLM
from f3_jax.sampling import sample_flow
from f3_jax.stages.flow.config import defaults as flow_defaults
from f3_jax.stages.flow.teacher_forcing import gaussian_velocity
from f3_jax.stages.flow.trainer import FlowTrainer
from f3_jax.stages.representation.trainer import RepresentationTrainer
from tests.repr_fixtures import repr_batch, tiny_repr_config


def _mesh(shape=(1, 1, 1), devices=None):
    cfg = ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tensor"), shape)))
    return parallel.make_mesh(cfg, devices or jax.devices()[:1])


def _flat(tree):
    return exports.flat_arrays(jax.device_get(tree))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("flow"))
    rc = tiny_repr_config(root)
    rt = RepresentationTrainer(rc, _mesh())
    repr_dir = os.path.join(root, "repr")
    rt.export(repr_dir, rt.initial_state(), 0)
    c = flow_defaults()
    c.sample_rate = rc.sample_rate
    c.autoencoder.workdir = rc.autoencoder.workdir
    c.representation.workdir = repr_dir
    c.llm.path = rc.llm.path
    c.llm.instruction = " the"
    c.llm.max_text_tokens = 12
    c.flow_head.width = 32
    c.flow_head.depth = 2
    c.flow_head.time_embed_dim = 16
    c.flow_head.stop_hidden = 0
    c.sampling.num_steps = 2
    c.sampling.max_seconds = 0.2  # 40 frames = 10 patches
    c.optim.warmup_steps = 0
    c.optim.lr = 1e-2
    c.data.crop_seconds = rc.data.crop_seconds
    c.train.batch_size = 8
    c.mesh.data = 1
    trainer = FlowTrainer(c, _mesh())
    return c, trainer, root


@pytest.fixture(scope="module")
def trained(setup):
    config, trainer, _ = setup
    frozen_before = _flat(trainer.frozen_weights())
    state = trainer.initial_state()
    init = jax.device_get(state)
    batch = parallel.global_batch(trainer.host_batch(repr_batch(config)), trainer.mesh)
    metrics = []
    for i in range(3):
        with jax.transfer_guard_device_to_host("disallow_explicit"):  # no host sync in a step
            state, m = trainer.train_step(state, batch, i)
        metrics.append(jax.device_get(m))
    return init, state, metrics, frozen_before, batch


def test_frozen_modules_unchanged_heads_move(setup, trained):
    _, trainer, _ = setup
    init, state, metrics, frozen_before, _ = trained
    after = _flat(trainer.frozen_weights())
    assert all(np.array_equal(after[k], frozen_before[k]) for k in frozen_before)
    for part in ("flow", "stop"):
        b, a = _flat(init["params"][part]), _flat(state["params"][part])
        assert any(not np.array_equal(a[k], b[k]) for k in a), part
    assert all(np.isfinite(m["loss/total"]) for m in metrics)
    assert metrics[-1]["loss/flow"] < metrics[0]["loss/flow"]


def test_eval_step_metrics(setup, trained):
    _, trainer, _ = setup
    _, state, _, _, batch = trained
    metrics, est = trainer.eval_step(state, batch)
    metrics = jax.device_get(metrics)
    for name in ("flow/loss", "flow/gaussian_baseline", "flow/teacher_forced_mel_distance"):
        value, weight = metrics[name]
        assert value.shape == (8,) and np.all(np.isfinite(value)), name
    assert est.shape == batch["audio"].shape


def test_gaussian_baseline_velocity_samples_the_gaussian():
    mean, var = jnp.array([1.0, -2.0]), jnp.array([0.25, 4.0])
    noise = jax.random.normal(jax.random.key(0), (20000, 1, 2))
    v = lambda x, t, drop: gaussian_velocity(x, t, mean, var)
    x = sample_flow(v, noise, num_steps=32, method="heun")
    np.testing.assert_allclose(x.mean(axis=(0, 1)), mean, atol=0.05)
    np.testing.assert_allclose(x.var(axis=(0, 1)), var, rtol=0.05)


def _generator(trainer):
    return trainer.generator()


def test_incremental_generation_equals_recompute(setup, trained):
    config, trainer, _ = setup
    _, state, *_ = trained
    params = jax.device_get(state["params"])
    params["stop"] = jax.tree.map(np.zeros_like, params["stop"])  # never stops (p = 0.5)
    gen = _generator(trainer)
    out = gen.generate(params, "the cat", seed=3, max_patches=5)
    assert out["num_patches"] == 5 and not out["stopped"]
    # Recompute every condition from scratch: full encoder and LLM over the generated latents.
    fz = trainer.frozen_weights()
    z = jnp.asarray(out["latents"])[None]
    fmask = jnp.ones(z.shape[:2])
    r, _ = trainer.representation.encode(fz["representation"], z, fmask)
    d, _, embeds = trainer.representation.patches(fz["representation"], r, fmask)
    ids = gen.tokenizer.encode(" the cat") + gen.instruction
    text = trainer.llm.module.apply(fz["llm"], jnp.asarray([ids]), method=LLM.embed)
    seq = jnp.concatenate([text, embeds], axis=1)
    hidden = trainer.llm.module.apply(fz["llm"], inputs_embeds=seq, return_logits=False)["hidden"]
    for t, (h, prev) in enumerate(out["conditions"]):
        np.testing.assert_allclose(h, hidden[0, len(ids) - 1 + t], atol=2e-4, err_msg=f"{t}")
        want_prev = np.zeros_like(prev) if t == 0 else d[0, t - 1]
        np.testing.assert_allclose(prev, want_prev, atol=2e-4, err_msg=f"{t}")
    assert out["audio"].shape == (5 * 4 * trainer.ae.hop,)


def _stop_bias(params, value):
    params = jax.tree.map(np.asarray, params)
    params["stop"] = jax.tree.map(np.zeros_like, params["stop"])
    leaves = jax.tree_util.tree_flatten_with_path(params["stop"])[0]
    bias = [p for p, _ in leaves if "bias" in jax.tree_util.keystr(p)]
    assert bias
    node = params["stop"]
    for k in bias[-1][:-1]:
        node = node[k.key]
    node[bias[-1][-1].key] = np.full_like(node[bias[-1][-1].key], value)
    return params


def test_stop_head_ends_generation_and_cap_holds(setup, trained):
    _, trainer, _ = setup
    _, state, *_ = trained
    gen = _generator(trainer)
    params = jax.device_get(state["params"])
    stops = gen.generate(_stop_bias(params, 50.0), "the", max_patches=6)
    assert stops["stopped"] and stops["num_patches"] == 1
    capped = gen.generate(_stop_bias(params, -50.0), "the", max_patches=6)
    assert not capped["stopped"] and capped["num_patches"] == 6
    default_cap = gen.generate(_stop_bias(params, -50.0), "the")
    assert default_cap["num_patches"] == gen.max_patches == 10


def test_export_is_self_contained_for_generation(setup, trained, tmp_path):
    config, trainer, _ = setup
    _, state, *_ = trained
    trainer.export(str(tmp_path), state, 3)
    gen, params = Generator.from_workdir(str(tmp_path))
    prompt = np.asarray(repr_batch(config)["audio"][0][:320])  # 8 frames = 2 prompt patches
    out = gen.generate(_stop_bias(params, -50.0), "", prompt_audio=prompt, max_patches=3)
    assert out["latents"].shape == (8 + 12, trainer.ae.latent_dim)
    assert out["audio"].shape == (20 * trainer.ae.hop,)
