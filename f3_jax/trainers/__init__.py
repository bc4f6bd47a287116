"""One trainer per stage; `create` picks it from config.stage.

The train loop (f3_jax/train.py) and the benchmarks use only this interface of a trainer:
  initial_state(), abstract_state()           the state on this mesh, or its restore target
  host_batch(local) -> dict                   numpy batch of this process -> the step's inputs
  train_step(state, batch, step) -> (state, metrics)
  log_metrics(state, batch, step) -> dict     extra diagnostics on log steps
  total_loss_key                              the metric a non-finite check watches
  eval_step(state, batch) -> ({name: (value (B,), weight (B,))}, outputs)
  eval_samples(writer, step, local, outputs, state) -> dict   samples of a first valid batch
  export(workdir, state, step)                WORKDIR/export for inference
  parameter_count(), step_flops(state, batch, step)
"""

from __future__ import annotations


def create(config, mesh):
    if config.stage == "autoencoder":
        from f3_jax.trainers.autoencoder import AutoencoderTrainer

        return AutoencoderTrainer(config, mesh)
    if config.stage == "representation":
        from f3_jax.trainers.representation import RepresentationTrainer

        return RepresentationTrainer(config, mesh)
    if config.stage == "flow":
        from f3_jax.trainers.flow import FlowTrainer

        return FlowTrainer(config, mesh)
    raise ValueError(f"config.stage={config.stage!r} has no trainer")
