"""What the registry knows of a stage: its config, checks, trainer, evaluator and inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of F3, as the config checks, the train loop, the eval binary and the
    benchmarks see it. Each stage's folder defines one (f3_jax/stages/<name>/__init__.py)."""

    name: str  # config.stage
    defaults: Callable[[], ml_collections.ConfigDict]  # its full-size default config
    doc_sources: tuple  # (defaults function, group) pairs whose comments document the fields
    number_rules: tuple  # (field, config.Rule) of its numeric fields
    enum_rules: tuple  # (field, allowed values) of its choice fields
    check: Callable[[ml_collections.ConfigDict], None]  # its other checks
    trainer: type  # an f3_jax.stages.trainer.Trainer subclass
    evaluator: type  # built as evaluator(config, trainer, EvalOptions)
    # Earlier stages' exports it reads: (config field of their workdir, what trains them).
    reads: tuple[tuple[str, str], ...] = ()
    uses_llm: bool = False  # reads config.llm.path
