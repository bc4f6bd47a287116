"""Stage 2: the representation encoder (config, trainer, evaluator)."""

from f3_jax.stages.representation import config
from f3_jax.stages.representation.evaluator import RepresentationEvaluator
from f3_jax.stages.representation.trainer import RepresentationTrainer
from f3_jax.stages.stage import Stage

STAGE = Stage(
    name="representation",
    defaults=config.defaults,
    doc_sources=config.DOC_SOURCES,
    number_rules=config.NUMBER_RULES,
    enum_rules=config.ENUM_RULES,
    check=config.check,
    trainer=RepresentationTrainer,
    evaluator=RepresentationEvaluator,
    reads=(("autoencoder.workdir", "stage 1 (configs/ae_*.py)"),),
    uses_llm=True,
)
