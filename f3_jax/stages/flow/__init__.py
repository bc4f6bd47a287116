"""Stage 3: the patch flow head and stop head (config, trainer, evaluator)."""

from f3_jax.stages.flow import config
from f3_jax.stages.flow.evaluator import FlowEvaluator
from f3_jax.stages.flow.trainer import FlowTrainer
from f3_jax.stages.stage import Stage

STAGE = Stage(
    name="flow",
    defaults=config.defaults,
    doc_sources=config.DOC_SOURCES,
    number_rules=config.NUMBER_RULES,
    enum_rules=config.ENUM_RULES,
    check=config.check,
    trainer=FlowTrainer,
    evaluator=FlowEvaluator,
    reads=(
        ("autoencoder.workdir", "stage 1 (configs/ae_*.py)"),
        ("representation.workdir", "stage 2 (configs/repr_*.py)"),
    ),
    uses_llm=True,
)
