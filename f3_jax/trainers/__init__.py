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
  export_later(workdir, state, step) -> write weights on the host now, files when write() runs
  parameter_count(), step_flops(state, batch, step)
  logical_state()                             the state's shapes with logical axis names
  lower_train_step(batch, step, **lower_kw)   the step lowered from shapes (planning, compiling)

`create(config, mesh, abstract_frozen=True)` builds a trainer whose frozen earlier stages are
ShapeDtypeStructs (no weights read; its steps lower and compile but cannot run); it is the only
way on a `jax.sharding.AbstractMesh`. `stand_ins` ({"autoencoder": stage-1 config,
"representation": stage-2 config}) replace the exports' configs then, so a run can be planned
before its earlier stages exist.
"""

from __future__ import annotations


def create(config, mesh, *, abstract_frozen: bool = False, stand_ins: dict | None = None):
    if config.stage == "autoencoder":
        from f3_jax.trainers.autoencoder import AutoencoderTrainer

        return AutoencoderTrainer(config, mesh)
    kwargs = {"abstract_frozen": abstract_frozen, "stand_ins": stand_ins}
    if config.stage == "representation":
        from f3_jax.trainers.representation import RepresentationTrainer

        return RepresentationTrainer(config, mesh, **kwargs)
    if config.stage == "flow":
        from f3_jax.trainers.flow import FlowTrainer

        return FlowTrainer(config, mesh, **kwargs)
    raise ValueError(f"config.stage={config.stage!r} has no trainer")


def check_inputs(config) -> None:
    """Raises a user error naming the field when an earlier stage's export or the LLM that
    `config` needs is missing: checked before any data is built or any step compiled."""
    import os

    from f3_jax.models.llm_loaders import smollm2_path
    from f3_jax.trainers import frozen

    if config.stage in ("representation", "flow"):
        frozen.export_dir(config.autoencoder.workdir, "autoencoder.workdir", "stage 1")
        path = config.llm.path
        if path == "smollm2":
            smollm2_path()
        elif not os.path.exists(path):
            raise FileNotFoundError(f"config.llm.path={path!r}: no such file or directory")
    if config.stage == "flow":
        frozen.export_dir(config.representation.workdir, "representation.workdir", "stage 2")
