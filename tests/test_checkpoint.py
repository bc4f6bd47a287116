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
