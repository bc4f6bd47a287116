"""The stages of F3 and the registry that the config checks, the train loop, the eval binary
and the benchmarks read: a stage is one folder (its config, trainer and evaluator) and one
line in `_STAGES` below.

    stage = stages.get(config.stage)
    stages.check_config(config, jax.device_count())
    trainer = stages.create_trainer(config, mesh)
"""

from __future__ import annotations

import os

import ml_collections

from f3_jax import config as config_lib
from f3_jax import exports
from f3_jax.config import ConfigError
from f3_jax.data import registry as data_registry
from f3_jax.models.llm_loaders import smollm2_path
from f3_jax.stages import autoencoder, flow, representation
from f3_jax.stages.stage import Stage
from f3_jax.stages.trainer import Trainer

_STAGES: dict[str, Stage] = {
    s.name: s for s in (autoencoder.STAGE, representation.STAGE, flow.STAGE)
}


def names() -> list[str]:
    return list(_STAGES)


def get(name: str) -> Stage:
    """The stage called `name` (config.stage); ConfigError naming the choices otherwise."""
    if name not in _STAGES:
        raise ConfigError(f"config.stage={name!r} is not one of {', '.join(_STAGES)}")
    return _STAGES[name]


def defaults_for(name: str) -> ml_collections.ConfigDict:
    return get(name).defaults()


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Stops a bad config before any compute, naming the field."""
    if "stage" not in config:
        raise ConfigError("config.stage is missing")
    stage = get(config.stage)
    config_lib.check_shared(
        config, num_devices, stage.defaults(), stage.number_rules, stage.enum_rules
    )
    stage.check(config)
    if config.data.source not in data_registry.names():
        raise ConfigError(
            f"config.data.source={config.data.source!r}: use one of "
            f"{', '.join(data_registry.names())}"
        )


def check_inputs(config: ml_collections.ConfigDict) -> None:
    """A user error naming the field when an earlier stage's export or the LLM that `config`
    reads is missing: checked before any data is built or any step compiled."""
    stage = get(config.stage)
    for field, what in stage.reads:
        exports.find(config_lib.field(config, field), field, what)
    if stage.uses_llm:
        path = config.llm.path
        if path == "smollm2":
            smollm2_path()
        elif not os.path.exists(path):
            raise FileNotFoundError(f"config.llm.path={path!r}: no such file or directory")


def describe(config: ml_collections.ConfigDict) -> str:
    """Every field of a resolved config with its value and meaning (--print_config)."""
    return config_lib.describe(config, get(config.stage).doc_sources)


def create_trainer(config, mesh, *, abstract_frozen: bool = False, stand_ins=None) -> Trainer:
    """The stage's trainer on `mesh`. abstract_frozen: earlier stages' weights and the LLM as
    ShapeDtypeStructs (steps lower and compile but cannot run; the only way on an
    AbstractMesh); stand_ins: {"autoencoder": stage-1 config, "representation": stage-2
    config} in place of exports that do not exist yet (planning a run)."""
    return get(config.stage).trainer(
        config, mesh, abstract_frozen=abstract_frozen, stand_ins=stand_ins
    )


def create_evaluator(config, trainer: Trainer, options):
    """The stage's evaluator over the trainer's modules (options: evaluation.EvalOptions)."""
    return get(config.stage).evaluator(config, trainer, options)
