"""Short fixed-seed runs of every stage, recorded once and compared bit for bit ever after.

`record(root)` trains each stage's tiny config (tests/ae_fixtures.py, tests/repr_fixtures.py) for
STEPS steps on fixed batches, in one process on one CPU device, and returns what must never
change by a refactoring: every logged loss of every step (as float hex, so equality is bit
for bit), a SHA-256 of the trained parameters after the last step, the validation metrics of
one eval batch, and for stage 3 the latents of a short generation. `write_legacy(root)` writes
workdirs (checkpoints and exports) that tests/test_stage_regression.py restores and generates
from with the code of the day.

    python -m tests.regression_runs   # rewrites tests/golden/ (only when a change is meant)
    python -m tests.regression_runs --records_only   # keeps the legacy workdirs
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from f3_jax import checkpoint, exports, parallel, stages
from f3_jax.stages.flow.config import defaults as flow_defaults
from tests.ae_fixtures import synthetic_batch, tiny_ae_config
from tests.repr_fixtures import repr_batch, tiny_repr_config

GOLDEN = Path(__file__).parent / "golden"
STEPS = 3


def mesh_of_one():
    cfg = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
    return parallel.make_mesh(cfg, jax.devices()[:1])


def digest(tree) -> str:
    """SHA-256 over every leaf's name, dtype, shape and bytes, in a fixed order."""
    h = hashlib.sha256()
    for name, value in sorted(exports.flat_arrays(jax.device_get(tree)).items()):
        value = np.asarray(value)
        h.update(f"{name}:{value.dtype}:{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _hex(value) -> str:
    return float(np.asarray(value, np.float64)).hex()


def _scalars(metrics: dict, prefix: str = "") -> dict[str, str]:
    """Scalar metrics as float hex; (value, weight) eval pairs as their weighted mean."""
    out = {}
    for name, value in jax.device_get(metrics).items():
        if isinstance(value, tuple):
            v, w = (np.asarray(x, np.float64) for x in value)
            value = np.sum(v * w) / max(np.sum(w), 1e-9)
        value = np.asarray(value)
        if value.ndim == 0:
            out[prefix + name] = _hex(value)
    return out


def _train(trainer, local: dict) -> tuple[dict, dict]:
    state = trainer.initial_state()
    batch = parallel.global_batch(trainer.host_batch(local), trainer.mesh)
    losses = {}
    for step in range(STEPS):
        state, metrics = trainer.train_step(state, batch, step)
        losses[str(step + 1)] = _scalars(metrics)
    return state, losses


def _eval(trainer, state, local: dict) -> dict[str, str]:
    host = trainer.host_batch(local) | {"valid": np.ones(len(local["audio"]), np.float32)}
    metrics, _ = trainer.eval_step(state, parallel.global_batch(host, trainer.mesh))
    return _scalars(metrics)


def stage1_config():
    return tiny_ae_config(**{"train.adversarial_start": 2})  # steps with and without the GAN


def stage3_config(root: str, repr_dir: str):
    rc = tiny_repr_config(root)
    c = flow_defaults()
    c.sample_rate = rc.sample_rate
    c.autoencoder.workdir = rc.autoencoder.workdir
    c.representation.workdir = repr_dir
    c.llm.path = rc.llm.path
    c.llm.instruction = " the"
    c.llm.max_text_tokens = 12
    c.flow_head.width = 32
    c.flow_head.depth = 2
    c.flow_head.time_embed_dim = 16
    c.flow_head.stop_hidden = 0
    c.sampling.num_steps = 2
    c.sampling.max_seconds = 0.2
    c.optim.warmup_steps = 0
    c.optim.lr = 1e-2
    c.data.crop_seconds = rc.data.crop_seconds
    c.train.batch_size = 8
    c.mesh.data = 1
    return c


def run_all(root: str) -> tuple[dict, dict]:
    """({stage: record}, {stage: (trainer, state)}) of the three tiny stages under root."""
    mesh = mesh_of_one()
    out, live = {}, {}
    c1 = stage1_config()
    t1 = stages.create_trainer(c1, mesh)
    state, losses = _train(t1, synthetic_batch(c1))
    out["autoencoder"] = {
        "losses": losses,
        "params": digest(state["gen"]["params"]),
        "disc_params": digest(state["disc"]["params"]),
        "eval": _eval(t1, state, synthetic_batch(c1, seed=1)),
    }
    live["autoencoder"] = (t1, state)

    c2 = tiny_repr_config(root)
    t2 = stages.create_trainer(c2, mesh)
    state, losses = _train(t2, repr_batch(c2))
    out["representation"] = {
        "losses": losses,
        "params": digest(state["params"]),
        "eval": _eval(t2, state, repr_batch(c2, seed=1)),
    }
    live["representation"] = (t2, state)
    repr_dir = os.path.join(root, "repr_run")
    t2.export(repr_dir, state, STEPS)

    c3 = stage3_config(root, repr_dir)
    t3 = stages.create_trainer(c3, mesh)
    state, losses = _train(t3, repr_batch(c3))
    generated = t3.generator().generate(
        jax.device_get(state["params"]), "the cat", seed=0, max_patches=3
    )
    out["flow"] = {
        "losses": losses,
        "params": digest(state["params"]),
        "eval": _eval(t3, state, repr_batch(c3, seed=1)),
        "generation": digest({"latents": jnp.asarray(generated["latents"])}),
    }
    live["flow"] = (t3, state)
    return out, live


def write_legacy(root: str, dest: Path) -> None:
    """Checkpoints and exports of the three stages, as today's code writes them, under dest."""
    _, live = run_all(root)
    shutil.rmtree(dest, ignore_errors=True)
    for stage, (trainer, state) in live.items():
        workdir = dest / stage
        ckpt = checkpoint.Checkpointer(str(workdir), async_save=False)
        ckpt.save(STEPS, state, None, trainer.config, force=True)
        ckpt.close()
        trainer.export(str(workdir), state, STEPS)


def machine() -> str:
    """What bit-for-bit results depend on: jax and jaxlib, and the CPU's vector extensions
    (XLA:CPU picks kernels by them)."""
    import jaxlib

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            line = next(x for x in f if x.startswith("flags"))
        flags = ",".join(sorted(f for f in line.split() if f.startswith(("avx", "fma", "sse4"))))
    except (OSError, StopIteration):
        pass
    return f"jax {jax.__version__} jaxlib {jaxlib.__version__} {flags}"


def legacy_block(records: dict) -> dict:
    """What tests/test_stage_regression.py checks of the workdirs in golden/legacy/: the
    digests of the parameters they hold and of the flow workdir's generation."""
    block = {stage: {"params": records[stage]["params"]} for stage in STAGES}
    block["flow"]["generation"] = records["flow"]["generation"]
    return block


STAGES = ("autoencoder", "representation", "flow")


def main() -> None:
    """--out FILE: the records as JSON (tests compare them with golden/stages.json); with no
    flag, rewrite golden/ (records and legacy workdirs); --records_only: rewrite the records
    and keep the legacy workdirs of earlier code (and their digests), for a change that moves
    results by float rounding. Run with one CPU device (no forced host device count):
    XLA:CPU's threading, hence float rounding, depends on it."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="write the records here instead of rewriting golden/")
    ap.add_argument("--records_only", action="store_true", help="keep golden/legacy/")
    args = ap.parse_args()
    jax.config.update("jax_platforms", "cpu")
    with tempfile.TemporaryDirectory() as root:
        records, _ = run_all(root)
    records["machine"] = machine()
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        return
    if args.records_only:
        old = json.loads((GOLDEN / "stages.json").read_text())
        records["legacy"] = old.get("legacy") or legacy_block(old)
    else:
        records["legacy"] = legacy_block(records)
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "stages.json").write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    if not args.records_only:
        with tempfile.TemporaryDirectory() as root:
            write_legacy(root, GOLDEN / "legacy")
    print(f"wrote {GOLDEN}/stages.json" + ("" if args.records_only else " and legacy/"))


if __name__ == "__main__":
    main()
