"""Bad configs stop before any compute, with a message naming the field."""

import re
import subprocess
import sys

import pytest

from f3_jax import config as config_lib
from f3_jax import stages


def _ae():
    return stages.defaults_for("autoencoder")


def _fails(config, devices, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        stages.check_config(config, devices)


def test_defaults_and_shipped_configs_are_valid():
    stages.check_config(_ae(), 1)
    for name, devices in (
        ("ae_demo", 8),
        ("ae_24k", 8),
        ("repr_demo", 4),
        ("repr_24k", 256),
        ("flow_demo", 4),
        ("flow_24k", 256),
    ):
        module = __import__(f"configs.{name}", fromlist=["get_config"])
        stages.check_config(module.get_config(), devices)


def test_later_stages_name_their_missing_inputs():
    c = stages.defaults_for("representation")
    _fails(c, 1, r"config\.autoencoder\.workdir is empty")
    c = stages.defaults_for("flow")
    c.autoencoder.workdir = "runs/ae"
    _fails(c, 1, r"config\.representation\.workdir is empty")
    c.representation.workdir = "runs/repr"
    c.sampling.method = "rk4"
    _fails(c, 1, r"config\.sampling\.method='rk4'")
    c = stages.defaults_for("representation")
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


# ---- numeric fields: every value the table of f3_jax.config checks -----------------------------

NAN, INF = float("nan"), float("inf")
# (field, bad values): finite positive fields refuse 0 and -1, non-negative ones refuse -1,
# fractions in [0, 1) refuse 1; every numeric field refuses nan and inf.
_POSITIVE = (NAN, INF, -INF, -1.0, 0.0)
_NON_NEGATIVE = (NAN, INF, -1.0)
_FRACTION = (NAN, INF, -0.1, 1.0, 1.5)
_BAD_NUMBERS = {
    "autoencoder": {
        "optim.gen_lr": _POSITIVE,
        "optim.disc_lr": _POSITIVE,
        "optim.b1": _FRACTION,
        "optim.b2": _FRACTION,
        "optim.weight_decay": _NON_NEGATIVE,
        "optim.grad_clip": _POSITIVE,
        "loss.mel_weight": _NON_NEGATIVE,
        "loss.stft_weight": _NON_NEGATIVE,
        "loss.adv_weight": _NON_NEGATIVE,
        "loss.feature_weight": _NON_NEGATIVE,
        "loss.log_eps": _POSITIVE,
        "bottleneck.noise_max": _NON_NEGATIVE,
        "bottleneck.noise_scale": _NON_NEGATIVE,
        "bottleneck.batch_norm_momentum": _FRACTION,
        "train.ema_decay": _FRACTION,
        "data.crop_seconds": _POSITIVE,
        "data.min_crop_fraction": (NAN, INF, -0.1, 1.5),
        "data.eval_max_seconds": _POSITIVE,
        "data.demo_minutes": _POSITIVE,
    },
    "representation": {
        "optim.lr": _POSITIVE,
        "optim.b1": _FRACTION,
        "optim.weight_decay": _NON_NEGATIVE,
        "optim.grad_clip": _POSITIVE,
        "loss.rq_mtp_weight": _NON_NEGATIVE,
        "loss.llm_weight": _NON_NEGATIVE,
        "encoder.rope_theta": _POSITIVE,
        "encoder.norm_eps": _POSITIVE,
        "data.crop_seconds": _POSITIVE,
    },
    "flow": {
        "optim.lr": _POSITIVE,
        "optim.b2": _FRACTION,
        "flow_loss.stop_weight": _NON_NEGATIVE,
        "flow_loss.stop_pos_weight": _NON_NEGATIVE,
        "flow_loss.logit_mean": (NAN, INF),
        "flow_loss.logit_std": _POSITIVE,
        "flow_head.cond_drop_prob": (NAN, INF, -0.1, 1.5),
        "sampling.guidance_scale": _NON_NEGATIVE,
        "sampling.temperature": _NON_NEGATIVE,
        "sampling.max_seconds": _POSITIVE,
    },
}


def _valid(stage: str):
    c = stages.defaults_for(stage)
    if stage != "autoencoder":
        c.autoencoder.workdir = "runs/ae"
    if stage == "flow":
        c.representation.workdir = "runs/repr"
    return c


@pytest.mark.parametrize(
    "stage,field,value",
    [
        (stage, field, value)
        for stage, fields in _BAD_NUMBERS.items()
        for field, values in fields.items()
        for value in values
    ],
)
def test_bad_number_is_named(stage, field, value):
    c = _valid(stage)
    stages.check_config(c, 1)  # valid before the change
    group, name = field.split(".")
    c[group][name] = value
    _fails(c, 1, re.escape(f"config.{field}={value!r}"))


@pytest.mark.parametrize("value", [0.0, 1e-8])
def test_zero_and_tiny_allowed_where_they_mean_something(value):
    c = _ae()
    c.train.ema_decay = c.optim.weight_decay = c.bottleneck.noise_max = value
    c.loss.adv_weight = c.loss.feature_weight = value  # a run without the GAN terms
    stages.check_config(c, 1)


@pytest.mark.parametrize("field", ["data.eval_bucket_seconds", "data.gain_db"])
def test_bad_entry_of_a_numeric_tuple_is_named(field):
    c = _ae()
    group, name = field.split(".")
    c[group][name] = (1.0, NAN)
    _fails(c, 1, re.escape(f"config.{field}=(1.0, nan)"))


def test_sample_every_zero_is_named():
    c = _ae()
    c.train.sample_every = 0
    _fails(c, 1, r"config\.train\.sample_every=0 must be at least 1")


def test_cli_rejects_nan_learning_rate_before_compute(tmp_path):
    """--config.optim.gen_lr=nan used to train and crash later in a histogram."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "f3_jax.train",
            "--config",
            "configs/ae_demo.py",
            "--workdir",
            str(tmp_path),
            "--config.optim.gen_lr=nan",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "config.optim.gen_lr=nan" in out.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("stage", ["autoencoder", "representation", "flow"])
def test_every_field_has_its_meaning_where_its_default_is_set(stage):
    from f3_jax import cli, config_docs

    docs = config_docs.field_docs(stages.get(stage).doc_sources)
    missing = [f for f in cli.all_fields(stages.defaults_for(stage)) if f not in docs]
    assert not missing, f"fields without a comment in their defaults: {missing}"


def test_print_config_shows_values_and_meanings():
    out = subprocess.run(
        [sys.executable, "-m", "f3_jax.train", "--config", "configs/repr_demo.py",
         "--print_config", "--config.train.steps=7"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    i = lines.index("train.steps = 7")
    assert lines[i + 1].strip() == "optimizer steps of the whole run"
    assert "encoder.width = 192" in lines and "[quantizer]" in lines
