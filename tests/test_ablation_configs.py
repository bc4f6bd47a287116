"""The paper's comparisons as config values: stage-1 bottleneck kinds, stage-2 objectives,
horizons and codebooks; a bad value stops before any compute, naming the field."""

import jax
import ml_collections
import numpy as np
import pytest

from f3_jax import config as config_lib
from f3_jax import parallel, stages
from f3_jax.stages.representation.trainer import RepresentationTrainer
from tests.repr_fixtures import repr_batch, tiny_repr_config


def _fails(config, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        stages.check_config(config, 1)


def _repr(**loss):
    c = stages.defaults_for("representation")
    c.autoencoder.workdir = "runs/ae"
    for k, v in loss.items():
        c.loss[k] = v
    return c


@pytest.mark.parametrize("kind", ["f3", "vae", "plain"])
def test_every_bottleneck_kind_is_valid(kind):
    c = stages.defaults_for("autoencoder")
    c.bottleneck.kind = kind
    stages.check_config(c, 1)


def test_bad_bottleneck_values_are_named():
    c = stages.defaults_for("autoencoder")
    c.bottleneck.kind = "vq"
    _fails(c, r"config\.bottleneck\.kind='vq'")
    c = stages.defaults_for("autoencoder")
    c.bottleneck.vae_min_std = 0.0
    _fails(c, r"config\.bottleneck\.vae_min_std")
    c = stages.defaults_for("autoencoder")
    c.loss.kl_weight = -1.0
    _fails(c, r"config\.loss\.kl_weight")
    c = stages.defaults_for("autoencoder")
    c.generability.test_fraction = 1.0
    _fails(c, r"config\.generability\.test_fraction")


@pytest.mark.parametrize("objectives", ["both", "rq_mtp", "llm"])
def test_every_stage2_objective_is_valid(objectives):
    stages.check_config(_repr(objectives=objectives), 1)


def test_bad_stage2_ablations_are_named():
    _fails(_repr(objectives="probe"), r"config\.loss\.objectives='probe'")
    _fails(_repr(objectives="rq_mtp", rq_mtp_weight=0.0), r"config\.loss\.rq_mtp_weight=0")
    _fails(_repr(objectives="llm", llm_weight=0.0), r"config\.loss\.llm_weight=0")
    _fails(
        _repr(rq_mtp_weight=0.0, llm_weight=0.0),
        r"config\.loss\.rq_mtp_weight=0 and config\.loss\.llm_weight=0",
    )
    stages.check_config(_repr(objectives="llm", rq_mtp_weight=0.0), 1)  # the unused one may be 0
    for field, value in (("rq_mtp.horizons", 0), ("quantizer.num_codebooks", 0)):
        c = _repr()
        group, leaf = field.split(".")
        c[group][leaf] = value
        _fails(c, rf"config\.{group}\.{leaf}")


def _repr_trainer(tmp_path, objectives: str):
    # no weight decay: then only a gradient moves the heads
    overrides = {"loss.objectives": objectives, "optim.weight_decay": 0.0}
    config = tiny_repr_config(str(tmp_path), **overrides)
    mesh_cfg = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
    trainer = RepresentationTrainer(config, parallel.make_mesh(mesh_cfg, jax.devices()[:1]))
    batch = parallel.global_batch(trainer.host_batch(repr_batch(config)), trainer.mesh)
    return trainer, batch


# "both" (the default) is tests/test_train_repr.py's
@pytest.mark.parametrize("objectives,terms", [("rq_mtp", {"rq_mtp"}), ("llm", {"transcript"})])
def test_stage2_step_has_the_objectives_terms(objectives, terms, tmp_path):
    """Traced and lowered, not compiled: the loss terms of each objective; the LLM term's
    step variant is never chosen without it."""
    trainer, batch = _repr_trainer(tmp_path, objectives)
    assert trainer.variant(batch, 0) == (objectives != "rq_mtp")
    _, metrics = trainer.lower_train_step(batch).out_info
    assert {k[len("loss/") :] for k in metrics if k.startswith("loss/")} == terms | {"total"}
    assert ("rq_mtp/acc_h1" in metrics) == ("rq_mtp" in terms)


@pytest.mark.slow  # two stage-2 steps to compile: minutes on a loaded 2-core machine
@pytest.mark.parametrize("objectives", ["rq_mtp", "llm"])
def test_stage2_trains_with_one_objective(objectives, tmp_path):
    trainer, batch = _repr_trainer(tmp_path, objectives)
    init = trainer.initial_state()
    heads_before = jax.device_get(init["params"]["heads"])
    state, metrics = trainer.train_step(init, batch, 0)
    assert np.isfinite(jax.device_get(metrics)["loss/total"])
    heads_after = jax.device_get(state["params"]["heads"])
    moved = any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(heads_before), jax.tree.leaves(heads_after))
    )
    assert moved == (objectives != "llm")  # no RQ-MTP term: the heads get no gradient


@pytest.mark.parametrize("size,devices", [("24k", (8, 256)), ("demo", (8, 4))])
def test_25hz_configs_of_every_stage(size, devices):
    """25 latent frames per second at 24 kHz, patches of 2 frames (12.5 Hz), noise up to 1."""
    load = lambda name: __import__(f"configs.{name}", fromlist=["get_config"]).get_config()
    ae, rep, flow = (load(f"{stage}_{size}_25hz") for stage in ("ae", "repr", "flow"))
    for c, n in ((ae, devices[0]), (rep, devices[1]), (flow, devices[1])):
        stages.check_config(c, n)
    assert ae.sample_rate // ae.model.hop == 25 and ae.bottleneck.noise_max == 1.0
    assert ae.generability.patch_frames == rep.adapter.downsample == 2
    assert rep.autoencoder.workdir == flow.autoencoder.workdir == f"runs/ae_{size}_25hz"
    assert flow.representation.workdir == f"runs/repr_{size}_25hz"
    base = load(f"ae_{size}")  # the rest is the 50 Hz config's
    assert ae.model.channels == base.model.channels and ae.train.steps == base.train.steps
