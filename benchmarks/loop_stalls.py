"""What the train loop waits for outside the step, before and after issue #9's changes.

    python benchmarks/loop_stalls.py --config configs/ae_24k.py
    python benchmarks/loop_stalls.py --config configs/repr_demo.py --repeats 5 --json /tmp/s.json

For the config's real train state (random initial values, on this machine's devices):

  checkpoint  the Orbax save as the loop calls it: synchronous (the loop waits for the files)
              against asynchronous (the loop waits for the device-to-host copy only; the files
              are written while the next steps run), and the background time after that.
  export      WORKDIR/export as one synchronous call (fetch + write) against export_later:
              the loop waits for the fetch, a background thread writes.
  batch       preparing one train batch on the host (host_batch: tokenizing transcripts for
              stages 2 and 3) and putting it on the devices (global_batch): the time
              data.device_prefetch takes out of the loop, since the next batches are prepared
              while the devices run the current step.

Medians of --repeats, in seconds. The checkpoint and export figures scale with the state's
size and the storage (a local disk here; gs:// uploads take longer, which the asynchronous
path hides as long as a save finishes within train.checkpoint_every steps).
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from f3_jax import checkpoint, exports, parallel, stages

try:  # run as a script: benchmarks/ is on sys.path
    import train_step
except ImportError:  # imported as benchmarks.loop_stalls (tests)
    from benchmarks import train_step


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def checkpoint_stalls(state, config, root: str, repeats: int) -> dict:
    """Seconds the loop waits for a checkpoint, synchronous and asynchronous."""
    out = {}
    for mode in ("sync", "async"):
        ckpt = checkpoint.Checkpointer(os.path.join(root, mode), keep=1, async_save=mode == "async")
        blocked, total = [], []
        for step in range(1, repeats + 1):
            t = time.perf_counter()
            ckpt.save(step, state, None, config, force=True)
            blocked.append(time.perf_counter() - t)
            ckpt.wait()
            total.append(time.perf_counter() - t)
        ckpt.close()
        out[f"checkpoint_{mode}_blocked_s"] = float(np.median(blocked))
        out[f"checkpoint_{mode}_total_s"] = float(np.median(total))
    return out


def export_stalls(trainer, state, root: str, repeats: int) -> dict:
    """Seconds the loop waits for an export: synchronous, then fetch-only (export_later)."""
    sync = _median(lambda: trainer.export(os.path.join(root, "sync"), state, 0), repeats)
    writes = exports.BackgroundWrites()
    blocked, total = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        writes.submit(trainer.export_later(os.path.join(root, "async"), state, 0))
        blocked.append(time.perf_counter() - t)
        writes.wait()
        total.append(time.perf_counter() - t)
    writes.close()
    return {
        "export_sync_s": sync,
        "export_async_blocked_s": float(np.median(blocked)),
        "export_async_total_s": float(np.median(total)),
    }


def batch_seconds(trainer, config, mesh, repeats: int) -> dict:
    """Seconds to prepare one batch on the host and put it on the devices."""
    local = train_step.synthetic_local_batch(config)

    def prepare():
        jax.block_until_ready(parallel.global_batch(trainer.host_batch(local), mesh))

    prepare()  # first call: tokenizer and transfer setup
    return {"batch_prepare_s": _median(prepare, repeats)}


def state_gib(state) -> float:
    return sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes")) / 2**30


def measure(config, repeats: int, ae_config=None, repr_config=None, num_devices=None) -> dict:
    """The figures for `config`; stages 2 and 3 over random exports of the frozen configs."""
    frozen = {"ae_config": ae_config, "repr_config": repr_config, "num_devices": num_devices}
    with train_step.prepared(config, **frozen) as (config, mesh):
        stages.check_config(config, mesh.devices.size)
        trainer = stages.create_trainer(config, mesh)
        state = trainer.initial_state()
        jax.block_until_ready(state)
        f = {
            "stage": config.stage,
            "state_gib": state_gib(state),
            "devices": int(mesh.devices.size),
            "device_kind": mesh.devices.flat[0].device_kind,
        }
        with tempfile.TemporaryDirectory(prefix="f3_stalls_") as root:
            f |= checkpoint_stalls(state, config, os.path.join(root, "ckpt"), repeats)
            f |= export_stalls(trainer, state, os.path.join(root, "export"), repeats)
        f |= batch_seconds(trainer, config, mesh, repeats)
    return f


def report(f: dict) -> str:
    return "\n".join(
        [
            f"state             {f['state_gib']:.3f} GiB on {f['devices']} x {f['device_kind']}",
            f"checkpoint        loop waits {f['checkpoint_sync_blocked_s']:.3f} s synchronous, "
            f"{f['checkpoint_async_blocked_s']:.3f} s asynchronous "
            f"(files done after {f['checkpoint_async_total_s']:.3f} s)",
            f"export            loop waits {f['export_sync_s']:.3f} s synchronous, "
            f"{f['export_async_blocked_s']:.3f} s with export_later "
            f"(files done after {f['export_async_total_s']:.3f} s)",
            f"batch             {f['batch_prepare_s'] * 1e3:.1f} ms to prepare and transfer "
            "(hidden behind the step by data.device_prefetch)",
        ]
    )


def define_flags() -> None:
    """Only when run as a program: tests import this module next to others with --config."""
    config_flags.DEFINE_config_file("config", None, "Config of the stage.")
    flags.DEFINE_integer("repeats", 3, "Repetitions of each measurement (median).")
    flags.DEFINE_string("json", None, "Also write the figures as JSON to this path.")
    flags.mark_flag_as_required("config")


def main(argv) -> None:
    del argv
    fv = flags.FLAGS
    config, path = fv.config, fv["config"].config_filename
    ae, rep = None, None
    if config.stage != "autoencoder":
        ae = train_step.load_config_file(train_step.sibling_config(path, "ae"))
    if config.stage == "flow":
        rep = train_step.load_config_file(train_step.sibling_config(path, "repr"))
    f = measure(config, fv.repeats, ae, rep)
    print(report(f))
    if fv.json:
        train_step.write_json(fv.json, f)


if __name__ == "__main__":
    define_flags()
    app.run(main)
