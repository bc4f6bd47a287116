"""python -m f3_jax.train --config configs/X.py --workdir DIR

The train loop shared by every stage: the config names the stage, the stage's trainer supplies
the state and step functions. Reads top to bottom: check config, build mesh, data, state,
resume, then step / log / validate / checkpoint until done or asked to stop.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from f3_jax import checkpoint, data, parallel, storage, trainers
from f3_jax import config as config_lib
from f3_jax.parallel import to_host
from f3_jax.preemption import GCE_MAINTENANCE_URL, MaintenanceWatcher, PreemptionWatcher
from f3_jax.prefetch import DevicePrefetch
from f3_jax.summary import Progress, SummaryWriter

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and logs go.")
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


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize when flags or the environment (TPU pod, SLURM) say so.

    A coordinator that does not answer within --distributed_timeout stops the process with a
    message naming it, instead of a hang or a bare RPC error.
    """
    if _DISTRIBUTED.value == "no":
        return
    ids = [int(i) for i in _LOCAL_DEVICE_IDS.value] if _LOCAL_DEVICE_IDS.value else None
    explicit = bool(_COORDINATOR.value) or (_NUM_PROCESSES.value or 1) > 1
    detected = (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    )
    if not (explicit or detected or _DISTRIBUTED.value == "yes"):
        return
    kwargs = dict(
        local_device_ids=ids,
        initialization_timeout=_INIT_TIMEOUT.value,
        heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value,
    )
    if explicit:  # else JAX detects the cluster: Cloud TPU VM, GKE, SLURM, MPI
        kwargs |= dict(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    where = _COORDINATOR.value or "the coordinator JAX detected"
    problem = None
    if _COORDINATOR.value and _PROCESS_ID.value:
        # JAX's client aborts the process (a C++ fatal error, no exception) when the
        # coordinator never answers; find out first, and say so in words.
        problem = wait_for_coordinator(_COORDINATOR.value, _INIT_TIMEOUT.value)
    if problem is None:
        try:
            jax.distributed.initialize(**kwargs)
        except Exception as e:  # any failure to join is reported the same way
            problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        sys.exit(
            f"error: could not join the distributed run at {where} as process "
            f"{_PROCESS_ID.value} of {_NUM_PROCESSES.value} within "
            f"--distributed_timeout={_INIT_TIMEOUT.value} s ({problem}). "
            "Is process 0 running, and is its address reachable from here?"
        )
    logging.info(
        "process %d of %d, %d local devices of %d",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def wait_for_coordinator(address: str, timeout_s: float) -> str | None:
    """None once a TCP connection to host:port succeeds, else the last error at the deadline."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                return None
        except OSError as e:
            if time.monotonic() >= deadline:
                return f"{type(e).__name__}: {e}"
        time.sleep(1.0)


def check_workdir(workdir: str) -> None:
    """The workdir is writable, and with several processes the same storage for all of them.

    Raises storage.WorkdirError on every process together (an all-gather decides), so none
    hangs in a later collective while the others stop.
    """
    if jax.process_count() == 1:
        storage.check_workdir_writable(workdir)
        return
    token = multihost_utils.broadcast_one_to_all(np.random.default_rng().integers(1 << 62))
    storage.check_workdir_shared(
        workdir,
        process_index=jax.process_index(),
        token=f"{int(token):x}",
        barrier=lambda: multihost_utils.sync_global_devices("workdir token written"),
        gather=lambda ok: multihost_utils.process_allgather(np.array(ok)),
    )


def wait_on_cpu(tree) -> None:
    # Several CPU devices in one process can deadlock when steps are dispatched without
    # waiting (DESIGN.md); accelerators keep the queue full.
    if jax.devices()[0].platform == "cpu":
        jax.block_until_ready(tree)


@jax.jit
def _masked_sums(metrics: dict, valid: jax.Array) -> dict:
    """Per metric, the sums of values and of weights over real (not padding) examples."""
    return {k: (jnp.sum(v * w * valid), jnp.sum(w * valid)) for k, (v, w) in metrics.items()}


def validate(trainer, config, mesh, state, step: int, writer: SummaryWriter) -> dict:
    """Weighted mean of each per-example validation metric over the valid split.

    The trainer's eval_step gives (value, weight) pairs per example; its eval_samples logs
    samples of the first batch (audio, transcripts) and may add metrics of its own.
    """
    per_process = config.data.eval_batch_size // jax.process_count()
    sums: dict[str, list[float]] = {}
    extra: dict[str, float] = {}
    for i, local in enumerate(
        data.eval_batches(
            config.data,
            sample_rate=config.sample_rate,
            split=config.data.eval_split,
            batch_size=per_process,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            max_examples=config.data.eval_max_examples,
        )
    ):
        host = trainer.host_batch(local) | {"valid": local["valid"]}
        batch = parallel.global_batch(host, mesh)
        metrics, outputs = trainer.eval_step(state, batch)
        with jax.set_mesh(mesh):
            weighted = to_host(_masked_sums(metrics, batch["valid"]))
        for k, (v, w) in weighted.items():
            acc = sums.setdefault(k, [0.0, 0.0])
            acc[0] += float(v)
            acc[1] += float(w)
        if i == 0:
            extra = trainer.eval_samples(writer, step, local, outputs, state)
    result = {f"valid/{k}": v / max(w, 1e-9) for k, (v, w) in sums.items()}
    result |= {f"valid/{k}": v for k, v in extra.items()}
    writer.scalars(step, result)
    logging.info(
        "validation at step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in result.items())
    )
    return result


def train(config, workdir: str) -> None:
    config_lib.validate(config, jax.device_count())
    check_workdir(workdir)
    mesh = parallel.make_mesh(config.mesh)
    logging.info(
        "mesh %s over %d devices in %d processes",
        dict(mesh.shape),
        jax.device_count(),
        jax.process_count(),
    )
    # One process builds a missing demo corpus; the others wait for it (no two writers).
    if jax.process_index() == 0:
        data.ensure_dataset(config.data, config.sample_rate)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dataset ready")
        data.ensure_dataset(config.data, config.sample_rate)
    trainer = trainers.create(config, mesh)
    train_t = config.train
    ckpt = checkpoint.Checkpointer(workdir, keep=train_t.keep_checkpoints)
    start = ckpt.latest_step() or 0
    data_start, data_state, num_skipped = 0, None, 0
    if start:
        data_start, data_state, num_skipped = ckpt.data_position(start, train_t.batch_size)
    data_iter = iter(
        data.train_dataset(
            config.data,
            sample_rate=config.sample_rate,
            batch_size=train_t.batch_size // jax.process_count(),
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            latent_cache=getattr(trainer, "latent_cache", None),  # stages 2, 3: data.latent_cache
            start=data_start,
            num_skipped=num_skipped,
        )
    )
    if start:
        logging.info("resuming from %s/%d", ckpt.directory, start)
        if data_state is None:
            logging.info("another process count or batch size: data from element %d", data_start)
        else:
            data_iter.set_state(data_state)
        data_iter.start_prefetch()  # reads the next batches while the state restores
        state = ckpt.restore(start, trainer.abstract_state())
    else:
        state = trainer.initial_state()
    batches = DevicePrefetch(
        data_iter,
        lambda local: parallel.global_batch(trainer.host_batch(local), mesh),
        size=config.data.device_prefetch,
    )

    writer = SummaryWriter(os.path.join(workdir, "train"))
    if start == 0:
        writer.text(0, "config", "```\n" + str(config) + "\n```")
    exports = checkpoint.BackgroundWrites()
    try:
        run_steps(trainer, config, mesh, state, start, batches, ckpt, exports, writer, workdir)
    finally:
        # Runs on errors too: an async save left running at interpreter shutdown fails with
        # "cannot schedule new futures after shutdown" and may leave a partial step behind.
        ckpt.wait()
        ckpt.close()
        exports.close()
        batches.close()  # stops Grain's prefetch threads and worker processes now
        writer.close()


def run_steps(
    trainer, config, mesh, state, start, batches: DevicePrefetch, ckpt, exports, writer, workdir
) -> None:
    """Step / log / validate / checkpoint from `start` until train.steps or a stop request."""
    train_t = config.train
    progress = Progress(train_t.steps, train_t.batch_size * config.data.crop_seconds, start)
    preemption = PreemptionWatcher()
    watch = _WATCH_MAINTENANCE.value
    if watch == "yes" or (watch == "auto" and jax.devices()[0].platform == "tpu"):
        MaintenanceWatcher(_MAINTENANCE_URL.value).start()  # a daemon thread; ends with us
    num_skipped_data = 0
    if start == 0 and train_t.eval_at_start:
        validate(trainer, config, mesh, state, 0, writer)

    for step in range(start, train_t.steps):
        local, batch = next(batches)
        num_skipped_data = int(local.get("num_skipped", num_skipped_data))
        done = step + 1
        if _RECORD_BATCH_IDS.value:
            writer.batch_ids(done, local["id"])
        state, metrics = trainer.train_step(state, batch, step)
        if done < train_t.steps:
            batches.read_ahead()  # the next batches go to the devices while this step runs
        wait_on_cpu(metrics)

        if done % train_t.log_every == 0 or done == train_t.steps:
            values = to_host(metrics) | to_host(trainer.log_metrics(state, batch, step))
            values["data/skipped_records"] = num_skipped_data
            writer.scalars(done, values | progress.report(done, values))
            if not np.isfinite(values.get(trainer.total_loss_key, 0.0)):
                logging.warning("non-finite loss at step %d; the update was skipped", done)
        if done % train_t.eval_every == 0 or done == train_t.steps:
            validate(trainer, config, mesh, state, done, writer)
        stop = preemption.should_stop(done)
        if done % train_t.checkpoint_every == 0 or done == train_t.steps or stop:
            # Both return once the state is on the host; files are written in the background.
            ckpt.save(done, state, batches.saved_state(), config, force=True)
            exports.submit(trainer.export_later(workdir, state, done))
        if stop:
            logging.warning("stopping at step %d after saving a checkpoint", done)
            break


def main(argv) -> None:
    del argv
    if _WORKDIR.value is None or _CONFIG.value is None:
        sys.exit("usage: python -m f3_jax.train --config configs/X.py --workdir DIR")
    maybe_initialize_distributed()
    try:
        train(_CONFIG.value, _WORKDIR.value)
    except (
        config_lib.ConfigError,
        data.DataError,
        storage.WorkdirError,
        FileNotFoundError,
    ) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
