"""Train-step benchmark: compiled step time, audio-seconds/s per device, FLOPs, MFU, memory.

    python benchmarks/train_step.py --config configs/ae_demo.py [--config.train.batch_size=4]

Runs on synthetic batches (no data needed), so it measures the step alone. FLOPs come from the
compiled steps' cost analysis; MFU is against the peak of the device found in DEVICE_PEAKS.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from f3_jax import config as config_lib
from f3_jax import parallel, trainers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after warm-up.")
_ADVERSARIAL = flags.DEFINE_bool("adversarial", True, "Time the step with the GAN terms on.")

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
DEVICE_PEAKS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA A100": 312e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
}


def device_peak(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for name, peak in DEVICE_PEAKS.items():
        if kind.startswith(name):
            return peak
    return None



def synthetic(config, mesh) -> dict:
    rng = np.random.default_rng(0)
    length = round(config.data.crop_seconds * config.sample_rate)
    audio = (0.1 * rng.standard_normal((config.train.batch_size, length))).astype(np.float32)
    return parallel.global_batch({"audio": audio, "mask": np.ones_like(audio)}, mesh)


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    config_lib.validate(config, jax.device_count())
    mesh = parallel.make_mesh(config.mesh)
    trainer = trainers.create(config, mesh)
    batch = synthetic(config, mesh)
    step0 = config.train.adversarial_start if _ADVERSARIAL.value else 0
    t0 = time.perf_counter()
    state = trainer.initial_state()
    state, metrics = trainer.train_step(state, batch, step0)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(_STEPS.value):
        t = time.perf_counter()
        state, metrics = trainer.train_step(state, batch, step0 + 1 + i)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    flops = trainer.step_flops(state, batch, step0)
    n = jax.device_count()
    audio_s = config.train.batch_size * config.data.crop_seconds / step_s
    peak = device_peak(jax.devices()[0])
    mem = jax.devices()[0].memory_stats() or {}
    print(f"config            {config.stage} batch {config.train.batch_size} x "
          f"{config.data.crop_seconds}s, {config.compute_dtype}, mesh {dict(mesh.shape)}")
    print(f"device            {n} x {jax.devices()[0].device_kind}")
    print(f"params            {trainer.parameter_count() / 1e6:.2f} M")
    print(f"init+compile      {compile_s:.1f} s")
    print(f"step time         {step_s * 1e3:.1f} ms (median of {len(times)})")
    print(f"audio-s/s/device  {audio_s / n:.2f}")
    print(f"FLOPs/step        {flops / 1e12:.4f} TFLOP")
    print(f"achieved          {flops / step_s / n / 1e12:.3f} TFLOP/s per device")
    if peak:
        print(f"MFU               {100 * flops / step_s / n / peak:.1f} % of {peak / 1e12:.0f} "
              "TFLOP/s bf16 peak")
    else:
        print("MFU               n/a (no peak figure for this device)")
    if "peak_bytes_in_use" in mem:
        print(f"peak memory       {mem['peak_bytes_in_use'] / 2**30:.2f} GiB per device")


if __name__ == "__main__":
    app.run(main)
