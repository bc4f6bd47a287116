"""Codec speed: real-time factor of the stage-1 autoencoder's encode and decode.

    python benchmarks/codec_rtf.py                                    # ae_24k, random weights
    python benchmarks/codec_rtf.py --config configs/ae_demo.py --batches 1,32
    python benchmarks/codec_rtf.py --workdir runs/ae_demo --json /tmp/rtf.json

Times `f3_jax.Tokenizer.encode` and `.decode`, the inference path users call (windowed,
batched, jitted; numpy in and out, so host transfers count), and with --modes=direct one
jitted call of the model on device arrays (no windows, no copies), on `--batches` clips of
`--seconds` each: one untimed call compiles every shape, then the median of `--runs` calls,
with their min and max beside it.
Weights: a workdir's export (or checkpoint), else random weights of `--config`.
Prints audio-seconds processed per second, which is the speed in "x faster than real time",
and the real-time factor compute/audio (below 1: faster than real time), for encode, decode
and encode+decode (the sum of the two medians).

Precision: the config's compute_dtype, so configs/ae_24k.py runs in bfloat16. On CPU that is
the slow path: XLA:CPU runs this model slower in bf16 than in float32 (DESIGN.md), so time
CPU runs with --config.compute_dtype=float32
(benchmarks/peer_codec.py does) and keep bf16 for accelerators.
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

try:  # run as a script: benchmarks/ is on sys.path
    import train_step
except ImportError:  # imported as benchmarks.codec_rtf
    from benchmarks import train_step
from f3_jax.inference.tokenizer import Tokenizer
from f3_jax.models.autoencoder import Autoencoder


def random_tokenizer(config, **kwargs) -> Tokenizer:
    """A Tokenizer of `config` with random weights (a stage-1 config)."""
    return Tokenizer(config, train_step.random_autoencoder_variables(config), **kwargs)


def test_clips(batch: int, seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """(batch, seconds * sample_rate) chirps plus noise: speech-like level, all distinct."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    f0 = rng.uniform(100, 1000, size=(batch, 1))
    wav = 0.3 * np.sin(2 * np.pi * f0 * (1 + t / seconds) * t)
    return (wav + 0.03 * rng.standard_normal(wav.shape)).astype(np.float32)


def timed(fn, runs: int) -> tuple[object, float, dict]:
    """(result, first-call seconds (compiles), min / median / max seconds of `runs` more
    calls)."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times = times or [first]
    return out, first, {"min": min(times), "median": float(np.median(times)), "max": max(times)}


def direct_fns(tok: Tokenizer):
    """(encode, decode) of whole (B, L) / (B, T, D) device arrays: one jitted call each, no
    windows and no host copies (the model's own speed)."""
    model = tok.model
    enc = jax.jit(lambda v, x: model.apply(v, x, train=False, method=Autoencoder.encode)["z"])
    dec = jax.jit(lambda v, z: model.apply(v, z, method=Autoencoder.decode))
    encode = lambda x: jax.block_until_ready(enc(tok.variables, x))
    decode = lambda z: jax.block_until_ready(dec(tok.variables, z))
    return encode, decode


def measure(tok: Tokenizer, batch: int, seconds: float, runs: int, mode: str) -> dict:
    """Encode, decode and encode+decode figures of `batch` clips of `seconds`.

    mode "tokenizer": Tokenizer.encode/decode (numpy in and out, windowed);
    mode "direct": one jitted call on device arrays (see direct_fns)."""
    wav = test_clips(batch, seconds, tok.sample_rate)
    if mode == "direct":
        encode, decode = direct_fns(tok)
        wav = jax.device_put(wav)
    else:
        encode, decode = tok.encode, tok.decode
    z, enc_first, enc_s = timed(lambda: encode(wav), runs)
    _, dec_first, dec_s = timed(lambda: decode(z), runs)
    audio = batch * seconds
    out = {"batch": batch, "seconds": seconds, "runs": runs, "mode": mode}
    out["latent_frames"] = int(z.shape[1])
    for name, first, s in (
        ("encode", enc_first, enc_s),
        ("decode", dec_first, dec_s),
        ("encode_decode", enc_first + dec_first, {k: enc_s[k] + dec_s[k] for k in enc_s}),
    ):
        out[name] = {
            "first_call_s": first,
            "min_s": s["min"],
            "median_s": s["median"],
            "max_s": s["max"],
            "audio_s_per_s": audio / s["median"],  # = x faster than real time
            "rtf": s["median"] / audio,
        }
    return out


def report(device: str, model: str, rows: list[dict]) -> str:
    lines = [f"device  {device}", f"model   {model}"]
    lines.append(
        f"{'mode':>9} {'batch':>5} {'clip':>6} {'part':>14} {'first call':>11} {'min':>9} "
        f"{'median':>9} {'max':>9} {'audio-s/s (x real time)':>24} {'RTF':>9}"
    )
    for r in rows:
        for part in ("encode", "decode", "encode_decode"):
            p = r[part]
            lines.append(
                f"{r['mode']:>9} {r['batch']:>5} {r['seconds']:>5.1f}s {part:>14} "
                f"{p['first_call_s']:>10.2f}s {p['min_s']:>8.3f}s {p['median_s']:>8.3f}s "
                f"{p['max_s']:>8.3f}s"
                f" {p['audio_s_per_s']:>24.1f} {p['rtf']:>9.4f}"
            )
    return "\n".join(lines)


def run(tok: Tokenizer, batches, seconds: float, runs: int, modes=("tokenizer",)) -> dict:
    device = jax.devices()[0]
    c = tok.config
    params = sum(int(x.size) for x in jax.tree.leaves(tok.variables["params"]))
    return {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "sample_rate": tok.sample_rate,
        "hop": tok.hop,
        "channels": int(c.model.channels),
        "compute_dtype": str(c.compute_dtype),
        "params_m": params / 1e6,
        "rows": [measure(tok, int(b), seconds, runs, m) for m in modes for b in batches],
    }


def describe(f: dict) -> str:
    return (
        f"{f['params_m']:.2f} M params, channels {f['channels']}, {f['sample_rate']} Hz, "
        f"hop {f['hop']}, {f['compute_dtype']}"
    )


# ---- command line ---------------------------------------------------------------------
def define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", "configs/ae_24k.py", "Stage-1 config (random weights) when no --workdir."
    )
    flags.DEFINE_string("workdir", None, "A stage-1 (or stage-2) workdir: its trained weights.")
    flags.DEFINE_list("batches", ["1", "32"], "Batch sizes (clips per call).")
    flags.DEFINE_float("seconds", 10.0, "Seconds per clip.")
    flags.DEFINE_integer("runs", 5, "Timed calls per figure (median).")
    flags.DEFINE_list(
        "modes",
        ["tokenizer", "direct"],
        "tokenizer: Tokenizer.encode/decode (windows, numpy in/out); direct: one jitted call.",
    )
    flags.DEFINE_integer("batch_windows", 32, "Tokenizer batch_windows: windows per jitted call.")
    flags.DEFINE_integer("chunk_frames", 500, "Tokenizer chunk_frames: latent frames per window.")
    flags.DEFINE_string("json", None, "Also write the figures as JSON to this path.")
    return flags.FLAGS


def main(argv) -> None:
    del argv
    from absl import flags

    fv = flags.FLAGS
    kwargs = {"batch_windows": fv.batch_windows, "chunk_frames": fv.chunk_frames}
    if fv.workdir:
        tok = Tokenizer.from_checkpoint(fv.workdir, **kwargs)
    else:
        tok = random_tokenizer(fv.config, **kwargs)
    f = run(tok, fv.batches, fv.seconds, fv.runs, fv.modes)
    f["weights"] = fv.workdir or "random"
    print(report(f"{jax.device_count()} x {f['device_kind']}", describe(f), f["rows"]))
    if fv.json:
        train_step.write_json(fv.json, f)
        print(f"wrote {fv.json}")
    values = [r[p]["audio_s_per_s"] for r in f["rows"] for p in ("encode", "decode")]
    if not all(np.isfinite(v) and v > 0 for v in values):
        sys.exit("non-positive or non-finite figures")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
