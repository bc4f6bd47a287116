"""One trainer per stage; `create` picks it from config.stage."""

from __future__ import annotations


def create(config, mesh):
    if config.stage == "autoencoder":
        from f3_jax.trainers.autoencoder import AutoencoderTrainer

        return AutoencoderTrainer(config, mesh)
    raise ValueError(f"config.stage={config.stage!r} has no trainer")
