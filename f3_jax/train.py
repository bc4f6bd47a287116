"""python -m f3_jax.train --config configs/X.py --workdir DIR

The train loop shared by every stage: the config names the stage, the stage's trainer supplies
the state and step functions. Reads top to bottom: check config, build mesh, data, state,
resume, then step / log / validate / checkpoint until done or asked to stop.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from f3_jax import checkpoint, cli, data, parallel, storage, trainers
from f3_jax import config as config_lib
from f3_jax.errors import UsageError
from f3_jax.parallel import to_host
from f3_jax.preemption import GCE_MAINTENANCE_URL, MaintenanceWatcher, PreemptionWatcher
from f3_jax.prefetch import DevicePrefetch
from f3_jax.progress import Progress
from f3_jax.summary import SummaryWriter
from f3_jax.workdir_lock import WorkdirLock, WorkdirLockedError

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
    shown = [f"valid/{k}" for k in trainer.headline_metrics if f"valid/{k}" in result]
    more = len(result) - len(shown)
    logging.info(
        "validation at step %d: %s%s",
        step,
        ", ".join(f"{k.removeprefix('valid/')}={result[k]:.4g}" for k in shown),
        f" (and {more} more metrics in TensorBoard and train/metrics.jsonl)" if more else "",
    )
    return result


def train(config, workdir: str) -> None:
    config_lib.validate(config, jax.device_count())
    trainers.check_inputs(config)
    check_workdir(workdir)
    lock = take_workdir_lock(workdir)
    try:
        train_locked(config, workdir)
    finally:
        if lock is not None:
            lock.release()


def take_workdir_lock(workdir: str) -> WorkdirLock | None:
    """Process 0 takes WORKDIR/train.lock; every process stops together if it cannot."""
    lock, problem = None, ""
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir)
        try:
            warning = lock.acquire()
            if warning:
                logging.warning("%s", warning)
        except WorkdirLockedError as e:
            lock, problem = None, str(e)
    if jax.process_count() > 1:
        held = multihost_utils.broadcast_one_to_all(np.int32(lock is not None))
        if not held and jax.process_index() != 0:
            problem = "process 0 could not take the workdir lock (its log says who holds it)"
    if problem:
        raise WorkdirLockedError(problem)
    return lock


def train_locked(config, workdir: str) -> None:
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
    # What validation will read is checked now, not after the first train.eval_every steps.
    data.check_eval_split(config.data, config.sample_rate)
    trainer = trainers.create(config, mesh)
    train_t = config.train
    ckpt = checkpoint.Checkpointer(workdir, keep=train_t.keep_checkpoints)
    restored = ckpt.restore_latest(
        trainer.abstract_state(), train_t.batch_size, fallback=train_t.restore_fallback
    )
    start = restored.step if restored else 0
    if restored:
        logging.info("resuming from %s/%d", ckpt.directory, start)
        log_config_changes(restored.config.get("config", {}), config)
    data_iter = iter(
        data.train_dataset(
            config.data,
            sample_rate=config.sample_rate,
            batch_size=train_t.batch_size // jax.process_count(),
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            latent_cache=getattr(trainer, "latent_cache", None),  # stages 2, 3: data.latent_cache
            start=restored.data_start if restored else 0,
            num_skipped=restored.num_skipped if restored else 0,
        )
    )
    if restored and restored.data_state is None:
        logging.info("another process count or batch size: data from element %d", start)
    elif restored:
        data_iter.set_state(restored.data_state)
    state = restored.state if restored else trainer.initial_state()
    logging.info(
        "%s: %.1f M trained parameters, batch %d x %g s, steps %d to %d; "
        "the first step compiles the train step first",
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


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class StepSaver:
    """Saves checkpoints (with the export) and, when anything fails after a step, the state
    of that step: a failure in validation, logging, sampling or an export never loses the
    steps since the last checkpoint."""

    def __init__(self, trainer, config, ckpt, exports, workdir: str, start: int):
        self.trainer, self.config, self.ckpt = trainer, config, ckpt
        self.exports, self.workdir = exports, workdir
        self.saved_step = start

    def save(self, step: int, state, data_state) -> None:
        """data_state: the data iterator's state after step `step`'s batch."""
        # Returns once the state is on the host; files are written in the background.
        self.ckpt.save(step, state, data_state, self.config, force=True)
        self.saved_step = step
        logging.info("checkpoint of step %d: %s/%d", step, self.ckpt.directory, step)
        write = self.trainer.export_later(self.workdir, state, step)
        where = os.path.join(self.workdir, checkpoint.EXPORT_DIR)

        def write_and_say() -> None:
            write()
            logging.info("export of step %d: %s", step, where)

        self.exports.submit(write_and_say)

    def rescue(self, step: int, state, data_state, error: BaseException) -> None:
        """After `error` past step `step` (whose state is intact): save it unless saved."""
        if step <= self.saved_step:
            return
        if not bool(_all_finite(state)):
            logging.error("not saving step %d after %s: its state is not finite", step, error)
            return
        logging.error(
            "%s after step %d: saving a checkpoint of it first", type(error).__name__, step
        )
        self.ckpt.save(step, state, data_state, self.config, force=True)
        self.saved_step = step


def run_steps(
    trainer, config, mesh, state, start, batches: DevicePrefetch, ckpt, exports, writer, workdir
) -> None:
    """Step / log / checkpoint / validate from `start` until train.steps or a stop request."""
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
    saver = StepSaver(trainer, config, ckpt, exports, workdir, start)
    num_skipped_data = 0
    if start == 0 and train_t.eval_at_start:
        with progress.paused("validation"):
            validate(trainer, config, mesh, state, 0, writer)

    # intact: `state` is the whole state after step `done`, and data_state the data's then
    done, intact, data_state = start, True, batches.saved_state()
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
                    validate(trainer, config, mesh, state, done, writer)
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
        print(config_lib.describe(_CONFIG.value))
        return
    if _WORKDIR.value is None:
        raise UsageError("--workdir is required: where checkpoints and logs go")
    maybe_initialize_distributed()
    train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
