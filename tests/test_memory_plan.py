"""benchmarks/memory_plan.py on stage 2 and 3: trainers built on an AbstractMesh (no devices,
frozen weights abstract, missing exports stood in for by configs), per-device bytes that fall
as 1/fsdp, and the train step lowered from shapes."""

import jax
import numpy as np
import pytest

from benchmarks import memory_plan
from f3_jax import stages
from f3_jax.stages.flow.config import defaults as flow_defaults
from tests.ae_fixtures import tiny_ae_config
from tests.repr_fixtures import tiny_repr_config

SIZES = (1, 2, 4)


@pytest.fixture(scope="module")
def repr_config(tmp_path_factory):
    return tiny_repr_config(str(tmp_path_factory.mktemp("plan")))


def _flow_config(rc, workdir):
    c = flow_defaults()
    c.sample_rate = rc.sample_rate
    c.autoencoder.workdir = workdir
    c.representation.workdir = workdir
    c.llm.path = rc.llm.path
    c.llm.max_text_tokens = 12
    c.flow_head.width = 32
    c.flow_head.depth = 2
    c.flow_head.time_embed_dim = 16
    c.data.crop_seconds = rc.data.crop_seconds
    c.train.batch_size = 8
    return c


def _per_device(leaves, fsdp):
    return memory_plan.plan(leaves, memory_plan.abstract_mesh((1, fsdp, 1))).total


def test_stage2_on_an_abstract_mesh_splits_state_and_frozen_weights(repr_config):
    mesh = memory_plan.abstract_mesh((1, 4, 1))
    trainer = memory_plan.build_trainer(repr_config, mesh, {})
    frozen = jax.tree.leaves(trainer.frozen_weights())
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in frozen)
    leaves = memory_plan.state_leaves(trainer)
    memory_plan.check_against_trainer(trainer, leaves, mesh)
    # the optimizer holds moments of the trained parameters only, none of the frozen weights
    groups = memory_plan.plan(leaves, mesh).per_group
    assert 1.99 < groups["opt"][0] / groups["params"][0] < 2.01
    state = _per_device([leaf for leaf in leaves if leaf.group in ("params", "opt")], 1)
    frozen = memory_plan.frozen_leaves(trainer)
    assert {leaf.group for leaf in frozen} == {"frozen/autoencoder", "frozen/llm"}
    for f in SIZES[1:]:
        trained = [leaf for leaf in leaves if leaf.group in ("params", "opt")]
        assert _per_device(trained, f) < 1.1 * state / f
        assert _per_device(frozen, f) < 1.2 * _per_device(frozen, 1) / f
    seconds, size = memory_plan.lower_on_abstract_mesh(trainer, repr_config, "cpu")
    assert size > 0


def test_stage3_planned_with_stand_ins_for_missing_exports(repr_config, tmp_path):
    config = _flow_config(repr_config, str(tmp_path / "missing"))
    stand_in = {"autoencoder": tiny_ae_config(), "representation": repr_config}
    assert memory_plan.stand_ins(config, None, stand_in) == stand_in
    with pytest.raises(SystemExit, match="--ae_config"):
        memory_plan.stand_ins(config, None, {})
    mesh = memory_plan.abstract_mesh((1, 2, 1))
    trainer = stages.create_trainer(config, mesh, stand_ins=stand_in)
    leaves = memory_plan.state_leaves(trainer)
    full, half = _per_device(leaves, 1), _per_device(leaves, 2)
    assert half < 0.55 * full
    frozen = {leaf.group for leaf in memory_plan.frozen_leaves(trainer)}
    assert frozen == {"frozen/autoencoder", "frozen/llm", "frozen/representation"}


@pytest.mark.slow  # compiles the tiny stage-2 step on one CPU device
def test_stage2_activations_compile_on_one_cpu_from_shapes(repr_config):
    stats, _ = memory_plan.measure_step_on_cpu(repr_config, 2, {})
    assert stats.temp_size_in_bytes > 0 and np.isfinite(stats.argument_size_in_bytes)
