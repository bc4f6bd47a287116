"""Bad configs stop before any compute, with a message naming the field."""

import subprocess
import sys

import pytest

from f3_jax import config as config_lib


def _ae():
    return config_lib.autoencoder_defaults()


def _fails(config, devices, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(config, devices)


def test_defaults_and_shipped_configs_are_valid():
    config_lib.validate(_ae(), 1)
    for name, devices in (
        ("ae_demo", 8),
        ("ae_24k", 8),
        ("repr_demo", 4),
        ("repr_24k", 256),
        ("flow_demo", 4),
        ("flow_24k", 256),
    ):
        module = __import__(f"configs.{name}", fromlist=["get_config"])
        config_lib.validate(module.get_config(), devices)


def test_later_stages_name_their_missing_inputs():
    c = config_lib.representation_defaults()
    _fails(c, 1, r"config\.autoencoder\.workdir is empty")
    c = config_lib.flow_defaults()
    c.autoencoder.workdir = "runs/ae"
    _fails(c, 1, r"config\.representation\.workdir is empty")
    c.representation.workdir = "runs/repr"
    c.sampling.method = "rk4"
    _fails(c, 1, r"config\.sampling\.method='rk4'")
    c = config_lib.representation_defaults()
    c.autoencoder.workdir = "runs/ae"
    c.encoder.num_kv_heads = 5
    _fails(c, 1, r"config\.encoder\.num_heads=16 is not a multiple")
    c.encoder.num_kv_heads = 4
    c.data.crop_mode = "middle"
    _fails(c, 1, r"config\.data\.crop_mode='middle'")


def test_unknown_key_is_named():
    c = _ae()
    c.train.stepz = 3
    _fails(c, 1, r"config\.train\.stepz")


def test_mesh_that_does_not_divide_devices():
    c = _ae()
    c.mesh.data, c.mesh.fsdp = 3, 1
    _fails(c, 8, r"mesh.*does not divide the 8 devices")


def test_mesh_that_uses_too_few_devices():
    c = _ae()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 1
    _fails(c, 8, r"uses 4 devices")


def test_batch_not_divisible_over_data_axes():
    c = _ae()
    c.mesh.data, c.mesh.fsdp = 2, 4
    c.train.batch_size = 12
    _fails(c, 8, r"config\.train\.batch_size=12 does not divide")


def test_hop_must_match_strides():
    c = _ae()
    c.model.hop = 400
    _fails(c, 1, r"config\.model\.hop=400")


def test_bad_enum_values_are_named():
    c = _ae()
    c.bottleneck.norm = "group"
    _fails(c, 1, r"config\.bottleneck\.norm='group'")


def test_negative_device_prefetch_is_named():
    c = _ae()
    c.data.device_prefetch = -1
    _fails(c, 1, r"config\.data\.device_prefetch=-1 must be >= 0")


def test_mesh_fill():
    c = _ae()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 2, 2
    assert config_lib.resolve_mesh_shape(c.mesh, 8) == (2, 2, 2)


def test_cli_rejects_bad_override_before_compute(tmp_path):
    """The train binary exits non-zero, naming the field, without creating a checkpoint."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "f3_jax.train",
            "--config",
            "configs/ae_demo.py",
            "--workdir",
            str(tmp_path),
            "--config.model.hop=400",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "config.model.hop=400" in out.stderr
    assert not (tmp_path / "checkpoints").exists()
