"""Stage 1: the normalized noisy autoencoder (config, trainer, evaluator)."""

from f3_jax.stages.autoencoder import config
from f3_jax.stages.autoencoder.evaluator import AutoencoderEvaluator
from f3_jax.stages.autoencoder.trainer import AutoencoderTrainer
from f3_jax.stages.stage import Stage

STAGE = Stage(
    name="autoencoder",
    defaults=config.defaults,
    doc_sources=config.DOC_SOURCES,
    number_rules=config.NUMBER_RULES,
    enum_rules=config.ENUM_RULES,
    check=config.check,
    trainer=AutoencoderTrainer,
    evaluator=AutoencoderEvaluator,
)
