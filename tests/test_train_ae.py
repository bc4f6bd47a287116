"""Stage-1 trainer: sharded steps equal single-device steps, guarded updates, restores."""

import jax
import ml_collections
import numpy as np
import pytest

from f3_jax import checkpoint, exports, parallel
from f3_jax.stages.autoencoder.trainer import AutoencoderTrainer
from tests.ae_fixtures import synthetic_batch, tiny_ae_config


def _trainer(config, mesh_shape, devices):
    mesh_cfg = ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tensor"), mesh_shape)))
    return AutoencoderTrainer(config, parallel.make_mesh(mesh_cfg, devices))


def _step(trainer, state, batch, step=0):
    batch = parallel.global_batch(batch, trainer.mesh)
    # No device-to-host transfer inside a step: the loop never waits on the devices.
    with jax.transfer_guard_device_to_host("disallow_explicit"):
        state, metrics = trainer.train_step(state, batch, step)
    jax.block_until_ready(state)
    return state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def single():
    config = tiny_ae_config()
    trainer = _trainer(config, (1, 1, 1), jax.devices()[:1])
    init = trainer.initial_state()
    host_init = jax.device_get(init)
    state, metrics = _step(trainer, init, synthetic_batch(config))
    return config, trainer, host_init, jax.device_get(state), metrics


# The second mesh is in the slow run: each mesh costs minutes of XLA:CPU compiles.
@pytest.fixture(
    scope="module",
    params=[(2, 4, 1), pytest.param((4, 1, 2), marks=pytest.mark.slow)],
    ids=["data2_fsdp4", "data4_tp2"],
)
def sharded(request, single):
    config = single[0]
    trainer = _trainer(config, request.param, jax.devices())
    init = trainer.initial_state()
    split = {
        f"{part}/{sub}": len(_split_leaves(init[part][sub]))
        for part, sub in (("gen", "params"), ("gen", "opt"), ("disc", "params"))
    }
    host_init = jax.device_get(init)
    state, metrics = _step(trainer, init, synthetic_batch(config))  # donates init
    return trainer, host_init, state, metrics, split


def _split_leaves(tree):
    return [x for x in jax.tree.leaves(tree) if x.addressable_shards[0].data.shape != x.shape]


def test_state_is_split_over_the_mesh(sharded):
    split = sharded[-1]
    assert all(count > 0 for count in split.values()), split


def test_sharded_step_equals_single_device(single, sharded):
    config, _, host_init, ref_state, ref_metrics = single
    _, init, state, metrics, _ = sharded
    flat_init = exports.flat_arrays(host_init)
    for key, value in exports.flat_arrays(init).items():
        # Same seed, same values; weight-norm gains (norms) may differ by an ulp when sharded.
        np.testing.assert_allclose(value, flat_init[key], rtol=1e-6, atol=1e-7, err_msg=key)
    for key in ("loss/mel", "loss/stft", "loss/adv", "loss/feature", "loss/disc"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, err_msg=key)
    for key in ("grad_norm/model", "grad_norm/disc"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-2, err_msg=key)
    flat_ref = exports.flat_arrays(ref_state)
    flat = exports.flat_arrays(state)
    params = [k for k in flat if "/params/" in f"/{k}"]
    diffs = np.concatenate([np.abs(flat[k] - flat_ref[k]).ravel() for k in params])
    # A first Adam step moves each weight by about lr = 1e-4 whatever the gradient's size, so
    # any real divergence shows. Only a weight whose gradient is ~0 may flip sign (2 * lr).
    assert np.mean(diffs <= 2e-6) > 0.999, np.sort(diffs)[-10:]
    assert diffs.max() <= 2 * config.optim.gen_lr + 1e-6
    # Adam moments hold raw gradients, where rounding is amplified by the per-frame latent
    # normalization at init: require agreement for nearly all entries.
    moments = [k for k in flat if "/mu/" in k]
    close = np.concatenate(
        [np.isclose(flat[k], flat_ref[k], rtol=1e-2, atol=1e-7).ravel() for k in moments]
    )
    assert close.mean() > 0.99


def test_nonfinite_gradient_leaves_parameters_unchanged(single):
    config, trainer, host_init, _, _ = single
    batch = synthetic_batch(config)
    batch["audio"][1, 5] = np.nan
    state = jax.device_put(host_init, trainer.shardings)
    after, metrics = _step(trainer, state, batch)
    after = jax.device_get(after)
    assert metrics["skipped/steps"] == 1 and metrics["skipped/disc_steps"] == 1
    assert after["skipped_gen"] == 1 and after["skipped_disc"] == 1
    for part in ("gen", "disc"):
        for a, b in zip(jax.tree.leaves(host_init[part]), jax.tree.leaves(after[part])):
            np.testing.assert_array_equal(a, b)


def test_restore_onto_a_different_mesh(single, sharded, tmp_path):
    config, trainer, _, _, _ = single
    state = sharded[2]
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(1, state, None, config)
    ckpt.wait()
    restored = ckpt.restore(1, trainer.abstract_state())
    for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(len(x.devices()) == 1 for x in jax.tree.leaves(restored))


def test_checkpoint_of_another_architecture_fails_clearly(single, tmp_path):
    config, _, host_init, _, _ = single
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(1, host_init, None, config)
    ckpt.wait()
    wider = _trainer(tiny_ae_config(**{"model.channels": 16}), (1, 1, 1), jax.devices()[:1])
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"leaf '.*' has shape"):
        ckpt.restore(1, wider.abstract_state())


def test_silent_crops_keep_the_stage1_loss_bounded_and_gradients_finite(single):
    """An all-zero or 1e-6-peak crop used to divide the spectral convergence by ~0: gen_total
    went from ~109 to ~93000 at init. With its floor it stays within a few times the loss on
    speech-like input (the init model's output is loud, so the silent crop's error is real)."""
    config, trainer, host_init, _, metrics = single
    # recorded before the floor: the loss on ordinary input is unchanged
    assert metrics["loss/total"] == pytest.approx(109.00911, rel=1e-4)
    assert metrics["loss/stft"] == pytest.approx(26.08164, rel=1e-4)
    speech = synthetic_batch(config)
    for scale in (0.0, 1e-6 / np.abs(speech["audio"]).max()):
        quiet = dict(speech, audio=(speech["audio"] * scale).astype(np.float32))
        _, m = _step(trainer, jax.device_put(host_init, trainer.shardings), quiet)
        assert m["loss/total"] < 8 * metrics["loss/total"], (scale, m)
        assert np.isfinite(m["grad_norm/model"]) and m["skipped/steps"] == 0, (scale, m)


def test_term_grad_norms_only_when_asked(single):
    """train.term_grad_norms: off (the default), log steps cost nothing more; on, each loss
    term's gradient norm alone, finite and positive."""
    config, trainer, host_init, _, _ = single
    state = jax.device_put(host_init, trainer.shardings)
    batch = parallel.global_batch(synthetic_batch(config), trainer.mesh)
    assert not config.train.term_grad_norms and trainer.log_metrics(state, batch, 1) == {}
    config.train.term_grad_norms = True
    try:
        norms = jax.device_get(trainer.log_metrics(state, batch, 1))
    finally:
        config.train.term_grad_norms = False
    assert {"grad_norm/mel", "grad_norm/stft"} <= set(norms)
    assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms
