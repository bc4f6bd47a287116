"""Checkpointer: relative workdirs, fresh-process reads, strict restores, exports."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3_jax import checkpoint, exports
from f3_jax.stages.autoencoder.config import defaults as autoencoder_defaults


def _state():
    return {"gen": {"params": {"w": jnp.arange(6.0).reshape(2, 3)}}, "step": jnp.int32(7)}


def test_relative_workdir_saves_and_a_new_manager_restores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = checkpoint.Checkpointer("runs/rel")
    ckpt.save(7, _state(), None, autoencoder_defaults())
    ckpt.wait()
    ckpt.close()
    assert (tmp_path / "runs/rel/checkpoints/7/state").is_dir()
    fresh = checkpoint.Checkpointer("runs/rel")  # as a resumed or eval process would
    assert fresh.latest_step() == 7
    raw = fresh.restore_raw()
    np.testing.assert_array_equal(raw["gen"]["params"]["w"], np.arange(6.0).reshape(2, 3))
    assert fresh.saved_config(7)["config"]["stage"] == "autoencoder"


def test_restore_names_the_missing_leaf(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(1, _state(), None, autoencoder_defaults())
    ckpt.wait()
    target = jax.eval_shape(_state)
    target["gen"]["params"]["b"] = jax.ShapeDtypeStruct((3,), jnp.float32)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="gen/params/b"):
        ckpt.restore(1, target)


def test_export_round_trip(tmp_path):
    variables = {"params": {"enc": {"kernel": np.ones((3, 2), np.float32)}}}
    exports.write(str(tmp_path), variables, autoencoder_defaults(), step=5)
    exports.write(str(tmp_path), variables, autoencoder_defaults(), step=6)  # overwrite
    loaded, config, step = exports.read(os.path.join(tmp_path, "export"))
    assert step == 6 and config.stage == "autoencoder"
    np.testing.assert_array_equal(loaded["params"]["enc"]["kernel"], np.ones((3, 2)))


def test_a_failed_restore_prints_no_asyncio_noise(tmp_path, capfd):
    """A deleted data file fails the restore with one exception and nothing on stderr
    (tensorstore's late reads print 'Event loop is closed' tracebacks without the filter);
    the caller reports the failure itself."""
    import orbax.checkpoint as ocp

    from f3_jax.checkpoint import quiet_orbax_errors

    tree = {f"a{i}": jnp.full((32, 32), float(i)) for i in range(40)}
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp_path, options=options) as manager:
        manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
    max((tmp_path / "1/state/d").iterdir(), key=lambda p: p.stat().st_size).unlink()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )
    capfd.readouterr()
    with pytest.raises(ValueError), quiet_orbax_errors():
        restore_args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        ocp.CheckpointManager(tmp_path).restore(1, args=restore_args)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err, err


def test_interleaved_fragments_of_the_closed_loop_traceback_are_noise():
    from f3_jax.stderr_noise import without_noise

    text = (
        "Traceback (most recent call last):\n"
        '  File "/x/asyncio/base_events.py", line 806, in call_soon_threadsafe\n'
        "RuntimeError: Event loop is closed    self._check_closed()\n"
        "\n"
        "    raise RuntimeError('Event loop is closed')\n"
        "12:00:00 WARNING checkpoint step 6 is unreadable\n"
        '  File "/x/f3_jax/train.py", line 3, in main\n'
    )
    assert without_noise(text) == (
        "12:00:00 WARNING checkpoint step 6 is unreadable\n"
        '  File "/x/f3_jax/train.py", line 3, in main\n'
    )


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_an_unreadable_export_falls_back_to_the_checkpoint(tmp_path, damage, caplog):
    """Issue 14.4: a broken export/weights.safetensors is read from the run's checkpoint
    instead, with one warning naming the file (Tokenizer.from_checkpoint reads through
    read_inference)."""
    import shutil

    legacy = os.path.join(os.path.dirname(__file__), "golden", "legacy", "autoencoder")
    workdir = tmp_path / "ae"
    shutil.copytree(legacy, workdir)
    weights = workdir / exports.EXPORT_DIR / exports.WEIGHTS
    expected, _, _ = exports.read_inference(str(workdir))
    if damage == "truncate":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    else:
        weights.unlink()
    variables, config, step = exports.read_inference(str(workdir))
    assert step == 3 and config.stage == "autoencoder"
    flat_expected = jax.tree_util.tree_leaves_with_path(expected)
    flat_found = dict(jax.tree_util.tree_leaves_with_path(variables))
    for path, leaf in flat_expected:
        np.testing.assert_array_equal(np.asarray(flat_found[path]), np.asarray(leaf))
    if damage == "truncate":
        assert any(str(weights) in r.getMessage() for r in caplog.records), caplog.text
