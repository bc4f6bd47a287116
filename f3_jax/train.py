"""python -m f3_jax.train --config configs/X.py --workdir DIR

The train loop shared by every stage: the config names the stage (f3_jax/stages/), whose
trainer supplies the state and the step functions. Reads top to bottom: check the config and
everything it reads, take the workdir, build the mesh, data and state or resume, then step /
log / checkpoint / validate until done or asked to stop. A failure after a step saves that
step first (step_saver.py).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from f3_jax import checkpoint, cli, data, distributed, parallel, stages
from f3_jax import config as config_lib
from f3_jax.aot.first_step import FirstStep
from f3_jax.errors import UsageError
from f3_jax.evaluation.validation import run_validation
from f3_jax.parallel import to_host
from f3_jax.preemption import GCE_MAINTENANCE_URL, MaintenanceWatcher, PreemptionWatcher
from f3_jax.prefetch import DevicePrefetch
from f3_jax.progress import Progress
from f3_jax.step_saver import StepSaver
from f3_jax.summary import SummaryWriter

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and logs go.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config",
    False,
    "Print every field of --config (overrides applied) with its meaning; exit.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-process runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "yes", "no"],
    "jax.distributed.initialize(): auto = when flags, SLURM or TPU_WORKER_HOSTNAMES say so; "
    "yes = always (JAX detects Cloud TPU VMs, GKE, SLURM, MPI); no = never.",
)
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids", None, "Devices of this process (default: JAX's choice)."
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout",
    300,
    "Seconds to wait for every process to join jax.distributed (the coordinator reachable).",
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout",
    100,
    "Seconds without a heartbeat after which a process counts as dead and the others stop.",
)
_WATCH_MAINTENANCE = flags.DEFINE_enum(
    "watch_maintenance",
    "auto",
    ["auto", "yes", "no"],
    "Treat a host-maintenance notice from the GCE metadata server as a SIGTERM (save, exit 0). "
    "auto = on TPU devices.",
)
_MAINTENANCE_URL = flags.DEFINE_string(
    "maintenance_url", GCE_MAINTENANCE_URL, "Metadata URL of the maintenance notice."
)
_RECORD_BATCH_IDS = flags.DEFINE_bool(
    "record_batch_ids",
    False,
    "Debug: append the record ids of every step's batch (process 0's part) to "
    "WORKDIR/train/batch_ids.jsonl, to check the data order across restarts.",
)


def wait_on_cpu(tree) -> None:
    # Several CPU devices in one process can deadlock when steps are dispatched without
    # waiting (DESIGN.md); accelerators keep the queue full.
    if jax.devices()[0].platform == "cpu":
        jax.block_until_ready(tree)


def train(config, workdir: str) -> None:
    stages.check_config(config, jax.device_count())
    stages.check_inputs(config)
    distributed.check_workdir(workdir)
    lock = distributed.take_workdir_lock(workdir)
    try:
        train_locked(config, workdir)
    finally:
        if lock is not None:
            lock.release()


def prepare_data(config) -> None:
    """The corpus exists (one process builds a missing demo corpus while the others wait),
    and what validation will read is checked now, not after train.eval_every steps."""
    if jax.process_index() == 0:
        data.ensure_dataset(config.data, config.sample_rate)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dataset ready")
        data.ensure_dataset(config.data, config.sample_rate)
    data.check_eval_split(config.data, config.sample_rate)


def train_locked(config, workdir: str) -> None:
    mesh = parallel.make_mesh(config.mesh)
    logging.info(
        "mesh %s over %d devices in %d processes",
        dict(mesh.shape),
        jax.device_count(),
        jax.process_count(),
    )
    prepare_data(config)
    trainer = stages.create_trainer(config, mesh)
    train_t = config.train
    ckpt = checkpoint.Checkpointer(workdir, keep=train_t.keep_checkpoints)
    restored = ckpt.restore_latest(
        trainer.abstract_state(), train_t.batch_size, fallback=train_t.restore_fallback
    )
    start = restored.step if restored else 0
    if restored:
        logging.info("resuming from %s/%d", ckpt.directory, start)
        log_config_changes(restored.config.get("config", {}), config)
    first_step = FirstStep(trainer, start) if start < train_t.steps else None
    data_iter = open_train_data(config, trainer, restored)
    state = restored.state if restored else trainer.initial_state()
    logging.info(
        "%s: %.1f M trained parameters, batch %d x %g s, steps %d to %d; "
        "the train step compiles meanwhile",
        config.stage,
        trainer.parameter_count() / 1e6,
        train_t.batch_size,
        config.data.crop_seconds,
        start + 1,
        train_t.steps,
    )
    batches = DevicePrefetch(
        data_iter,
        lambda local: parallel.global_batch(trainer.host_batch(local), mesh),
        size=config.data.device_prefetch,
    )
    writer = SummaryWriter(os.path.join(workdir, "train"))
    if start == 0:
        writer.text(0, "config", "```\n" + str(config) + "\n```")
    saver = StepSaver(trainer, config, ckpt, workdir, start)
    try:
        run_steps(trainer, config, state, start, batches, saver, writer, first_step)
    finally:
        # Runs on errors too: an async save left running at interpreter shutdown fails with
        # "cannot schedule new futures after shutdown" and may leave a partial step behind.
        saver.close()
        ckpt.close()
        batches.close()  # stops Grain's prefetch threads and worker processes now
        writer.close()


def open_train_data(config, trainer, restored: checkpoint.Restored | None):
    """This process's train batches, from the restored data position when resuming."""
    data_iter = iter(
        data.train_dataset(
            config.data,
            sample_rate=config.sample_rate,
            batch_size=config.train.batch_size // jax.process_count(),
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            latent_cache=trainer.latent_cache,  # stages 2, 3: data.latent_cache
            start=restored.data_start if restored else 0,
            num_skipped=restored.num_skipped if restored else 0,
        )
    )
    if restored and restored.data_state is None:
        logging.info("another process count or batch size: data from element %d", restored.step)
    elif restored:
        data_iter.set_state(restored.data_state)
    return data_iter


def log_config_changes(saved: dict, config) -> None:
    """One warning listing the fields that differ from the checkpoint's config."""
    now = config_lib.flatten(json.loads(config.to_json_best_effort()))
    before = config_lib.flatten(saved)
    changed = [
        f"{k}: {before.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}"
        for k in sorted(set(now) | set(before))
        if before.get(k) != now.get(k)
    ]
    if changed:
        logging.warning("resuming with a changed config: %s", "; ".join(changed))


def run_steps(
    trainer, config, state, start, batches: DevicePrefetch, saver, writer, first_step=None
) -> None:
    """Step / log / checkpoint / validate from `start` until train.steps or a stop request;
    `first_step` (f3_jax.aot.first_step) is awaited before the first step."""
    train_t = config.train
    progress = Progress(
        train_t.steps,
        train_t.batch_size * config.data.crop_seconds,
        start,
        phases=trainer.step_phases(),
        eval_every=train_t.eval_every,
        checkpoint_every=train_t.checkpoint_every,
    )
    preemption = PreemptionWatcher()
    watch = _WATCH_MAINTENANCE.value
    if watch == "yes" or (watch == "auto" and jax.devices()[0].platform == "tpu"):
        MaintenanceWatcher(_MAINTENANCE_URL.value).start()  # a daemon thread; ends with us
    num_skipped_data = 0
    if start == 0 and train_t.eval_at_start:
        with progress.paused("validation"):
            run_validation(trainer, config, state, 0, writer)

    # intact: `state` is the whole state after step `done`, and data_state the data's then
    done, intact, data_state = start, True, batches.saved_state()
    if first_step is not None:
        first_step.wait()
    try:
        for step in range(start, train_t.steps):
            local, batch = next(batches)
            num_skipped_data = int(local.get("num_skipped", num_skipped_data))
            if _RECORD_BATCH_IDS.value:
                writer.batch_ids(step + 1, local["id"])
            intact = False  # the step donates the state's buffers
            state, metrics = trainer.train_step(state, batch, step)
            done, intact, data_state = step + 1, True, batches.saved_state()
            if done < train_t.steps:
                batches.read_ahead()  # the next batches go to the devices while this step runs
            wait_on_cpu(metrics)

            if done % train_t.log_every == 0 or done == train_t.steps:
                values = to_host(metrics) | to_host(trainer.log_metrics(state, batch, step))
                values["data/skipped_records"] = num_skipped_data
                writer.scalars(done, values | progress.report(done, values))
                if not np.isfinite(values.get(trainer.total_loss_key, 0.0)):
                    logging.warning("non-finite loss at step %d; the update was skipped", done)
            stop = preemption.should_stop(done)
            if done % train_t.checkpoint_every == 0 or done == train_t.steps or stop:
                with progress.paused("checkpoint"):  # before validation: nothing lost there
                    saver.save(done, state, data_state)
            if done % train_t.eval_every == 0 or done == train_t.steps:
                with progress.paused("validation"):
                    run_validation(trainer, config, state, done, writer)
            if stop:
                logging.warning("stopping at step %d after saving a checkpoint", done)
                break
    except BaseException as e:  # KeyboardInterrupt too: the finished steps are kept
        if intact:
            saver.rescue(done, state, data_state, e)
        raise


def main(argv) -> None:
    del argv
    if _CONFIG.value is None:
        raise UsageError("--config is required: python -m f3_jax.train --config configs/X.py")
    if _PRINT_CONFIG.value:
        print(stages.describe(_CONFIG.value))
        return
    if _WORKDIR.value is None:
        raise UsageError("--workdir is required: where checkpoints and logs go")
    distributed.maybe_initialize(
        _DISTRIBUTED.value,
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        _LOCAL_DEVICE_IDS.value,
        _INIT_TIMEOUT.value,
        _HEARTBEAT_TIMEOUT.value,
    )
    train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
