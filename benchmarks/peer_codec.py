"""f3_jax's stage-1 autoencoder side by side with descript-audio-codec (PyTorch) on one machine.

    pip install -e ".[peer]"   # torch and descript-audio-codec: see README, "Speed against a peer"
    python benchmarks/peer_codec.py                    # ae_24k size, 5 rounds
    python benchmarks/peer_codec.py --size tiny --rounds 1 --batch 2 --seconds 0.2

One invocation builds, at the same size, f3_jax's `Autoencoder` (ae_24k: widths 64 -> 1024,
strides (2, 4, 6, 10), 64 latent channels) and DAC's `Encoder` + `Decoder` (d_model 64, the
same strides, a 1024-wide decoder, a continuous 64-channel latent: no quantizer), both float32
with random weights, and times the same work for both:

  - step: the generator step on `--batch` clips of `--seconds` (8 x 1 s at 24 kHz): forward,
    a 2-scale mel loss (the same formula in both: centered Hann STFT, hop = window / 4, Slaney
    mel, L1 of 2 log10 magnitudes, windows MEL_WINDOWS), backward and an AdamW update (0.8,
    0.99, weight decay 0.01). f3_jax's step is one jitted program with donated state;
  - encode and decode of a `--clip_seconds` clip (10 s) at batch 1 (f3_jax: one jitted call on
    a device array; DAC: the modules under torch.inference_mode);
  - f3_jax's windowed `Tokenizer.encode` and `.decode` (numpy in and out) against the direct
    calls.

Every task runs untimed first (WARMUP: f3_jax compiles, TorchScript profiles), then
`--rounds` rounds each run every task once in turn (round robin: a change in the machine's
load hits both codecs alike); the report gives min / median / max seconds, audio-seconds
per second and the ratios of medians (peer / f3_jax: above 1, f3_jax is faster).
Peak memory: the largest rise of the process's resident set over its level before the
call, sampled every 5 ms while each timed call runs (freed heap is handed back with
malloc_trim before each call), plus the persistent state (weights, optimizer moments);
XLA's own count of the compiled step's temporaries is printed beside it.

descript-audiotools (imported by `dac`) imports torchaudio, whose PyPI wheels are built for
CUDA torch; when that import fails, DAC's model files are loaded without it (they need only
torch, numpy and einops), see `dac_modules`.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import os
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from f3_jax import dsp
from f3_jax.inference.tokenizer import Tokenizer
from f3_jax.models.autoencoder import Autoencoder
from f3_jax.stages.autoencoder.config import defaults

MEL_WINDOWS = (512, 2048)  # the 2-scale mel loss (hop = window / 4)
MEL_BINS = (80, 320)
ADAMW = {"lr": 1e-4, "betas": (0.8, 0.99), "weight_decay": 0.01}
# Untimed calls per task: f3_jax's first call compiles; DAC's Snake is TorchScript, whose
# profiling executor runs the first two calls slowly (profiling, then fusing).
WARMUP = {"f3": 1, "dac": 2}
SIZES = {  # channels, channel_mults, strides, latent_dim
    "full": (64, (1, 2, 4, 8, 16), (2, 4, 6, 10), 64),  # configs/ae_24k.py
    "tiny": (4, (1, 2, 4), (2, 4), 8),
}


def f3_config(size: str):
    """The stage-1 config of `size` in float32 (the CPU path)."""
    channels, mults, strides, latent = SIZES[size]
    c = defaults()
    c.compute_dtype = "float32"
    c.model.channels, c.model.channel_mults = channels, mults
    c.model.strides, c.model.latent_dim = strides, latent
    c.model.hop = int(np.prod(strides))
    return c


# ---- f3_jax ---------------------------------------------------------------------------
def f3_variables(config) -> dict:
    import flax.linen as nn

    model = Autoencoder.from_config(config)
    x = jnp.zeros((1, 8 * int(config.model.hop)))
    init = jax.jit(lambda k: model.init({"params": k, "noise": k}, x, train=False))
    return nn.unbox(init(jax.random.key(0)))


def f3_step(config, variables: dict):
    """(step(wav) -> loss, persistent bytes, fn(wav) -> XLA temporaries bytes): the matched
    step."""
    model = Autoencoder.from_config(config)
    sr = int(config.sample_rate)
    tx = optax.adamw(ADAMW["lr"], *ADAMW["betas"], weight_decay=ADAMW["weight_decay"])
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params, wav, key):
        y = model.apply({"params": params, **rest}, wav, train=True, rngs={"noise": key})["wav"]
        d = dsp.mel_distance(wav, y, sample_rate=sr, window_sizes=MEL_WINDOWS, mel_bins=MEL_BINS)
        return jnp.mean(d)

    def step(params, opt, wav, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, wav, key)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    jitted = jax.jit(step, donate_argnums=(0, 1))
    state = {"params": jax.tree.map(jnp.copy, variables["params"])}
    state["opt"] = jax.jit(tx.init)(state["params"])
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    keys = iter(jax.random.split(jax.random.key(1), 10_000))

    def run(wav):
        state["params"], state["opt"], loss = jitted(state["params"], state["opt"], wav, next(keys))
        return float(loss)

    return run, nbytes, lambda wav: compiled_temp(jitted, state, wav)


def compiled_temp(jitted, state, wav) -> float | None:
    analysis = jitted.lower(state["params"], state["opt"], wav, jax.random.key(0)).compile()
    analysis = analysis.memory_analysis()
    return None if analysis is None else float(analysis.temp_size_in_bytes)


def f3_codec(config, variables: dict, clip: np.ndarray, chunk_frames: int):
    """{task: fn}: direct encode / decode (device arrays, one jitted call) and the windowed
    Tokenizer.encode / .decode of the same clip and latents (numpy in and out)."""
    model = Autoencoder.from_config(config)
    enc = jax.jit(lambda v, x: model.apply(v, x, train=False, method=Autoencoder.encode)["z"])
    dec = jax.jit(lambda v, z: model.apply(v, z, method=Autoencoder.decode))
    x = jax.device_put(clip)
    z = jax.block_until_ready(enc(variables, x))
    tok = Tokenizer(config, variables, chunk_frames=chunk_frames)
    z_np = np.asarray(z)
    return {
        "encode": lambda: jax.block_until_ready(enc(variables, x)),
        "decode": lambda: jax.block_until_ready(dec(variables, z)),
        "tokenizer_encode": lambda: tok.encode(clip[0]),
        "tokenizer_decode": lambda: tok.decode(z_np[0]),
    }


# ---- descript-audio-codec -------------------------------------------------------------
def dac_modules():
    """DAC's (Encoder, Decoder) classes. When `import dac` fails in descript-audiotools
    (torchaudio built for another torch), loads dac/model/dac.py with a stand-in for the
    three audiotools names it imports (AudioSignal and BaseModel, used only by the DAC class,
    not by Encoder and Decoder)."""
    try:
        from dac.model.dac import Decoder, Encoder

        return Encoder, Decoder
    except OSError:
        pass
    import torch

    for name in [m for m in sys.modules if m.split(".")[0] in ("dac", "audiotools")]:
        del sys.modules[name]
    stub = types.ModuleType("audiotools")
    stub.AudioSignal = object
    stub.ml = types.ModuleType("audiotools.ml")
    stub.ml.BaseModel = type("BaseModel", (torch.nn.Module,), {"INTERN": [], "EXTERN": []})
    sys.modules.update({"audiotools": stub, "audiotools.ml": stub.ml})
    root = os.path.dirname(importlib.util.find_spec("dac").origin)
    for package in ("dac", "dac.nn", "dac.model"):  # without their __init__ imports
        module = types.ModuleType(package)
        module.__path__ = [os.path.join(root, *package.split(".")[1:])]
        sys.modules[package] = module
    dac = importlib.import_module("dac.model.dac")
    return dac.Encoder, dac.Decoder


def dac_pair(size: str):
    """DAC's encoder and decoder of `size` (continuous latent of latent_dim channels)."""
    import torch

    torch.manual_seed(0)
    channels, mults, strides, latent = SIZES[size]
    Encoder, Decoder = dac_modules()
    enc = Encoder(d_model=channels, strides=list(strides), d_latent=latent)
    dec = Decoder(latent, channels * mults[-1], list(reversed(strides)))
    return enc, dec


def torch_mel_loss(x, y, sample_rate: int):
    """The same 2-scale mel distance as f3_jax.dsp.mel_distance, in PyTorch."""
    import torch

    total = 0.0
    for win, bins in zip(MEL_WINDOWS, MEL_BINS):
        window = torch.from_numpy(dsp.window_array("hann", win))
        fb = torch.from_numpy(dsp.mel_filterbank(sample_rate, win, bins).T.copy())

        def logmel(s, win=win, window=window, fb=fb):
            spec = torch.stft(s, win, win // 4, window=window, center=True, return_complex=True)
            mag = torch.sqrt(spec.real.square() + spec.imag.square() + dsp._SQRT_EPS)
            return 2.0 * torch.log10(mag.transpose(1, 2) @ fb + 1e-5)

        total = total + (logmel(x) - logmel(y)).abs().mean()
    return total


def dac_tasks(size: str, wav: np.ndarray, clip: np.ndarray, sample_rate: int):
    """({task: fn}, persistent bytes, parameter count) of DAC's step, encode and decode."""
    import torch

    enc, dec = dac_pair(size)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, **ADAMW)
    x, c = torch.from_numpy(wav), torch.from_numpy(clip)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch_mel_loss(x, dec(enc(x[:, None]))[:, 0], sample_rate)
        loss.backward()
        opt.step()
        return float(loss)

    with torch.inference_mode():
        z = enc(c[:, None])

    def infer(fn, arg):
        with torch.inference_mode():
            return fn(arg)

    tasks = {
        "step": step,
        "encode": lambda: infer(enc, c[:, None]),
        "decode": lambda: infer(dec, z),
    }
    n = sum(p.numel() for p in params)
    return tasks, 3 * 4 * n, n  # weights + two AdamW moments, float32


# ---- timing and memory ----------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed_call(fn) -> tuple[float, int]:
    """(seconds, largest rise of the resident set during the call, bytes)."""
    _trim()
    base, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss() - base)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    return seconds, max(peak[0], _rss() - base)


def round_robin(tasks: dict, rounds: int) -> dict:
    """{name: {"times": [...], "rise": bytes}}: untimed calls first (WARMUP), then `rounds`
    rounds of one call each."""
    out = {name: {"times": [], "rise": 0} for name in tasks}
    for name, fn in tasks.items():
        for _ in range(WARMUP[name.split("/")[0]]):
            fn()
    for _ in range(rounds):
        for name, fn in tasks.items():
            seconds, rise = timed_call(fn)
            out[name]["times"].append(seconds)
            out[name]["rise"] = max(out[name]["rise"], rise)
    return out


def stats(times) -> dict:
    return {"min": min(times), "median": float(np.median(times)), "max": max(times)}


# ---- the comparison -------------------------------------------------------------------
def inputs(batch: int, seconds: float, clip_seconds: float, sample_rate: int, hop: int):
    rng = np.random.default_rng(0)
    n = round(seconds * sample_rate) // hop * hop
    wav = 0.3 * rng.standard_normal((batch, n))
    clip = 0.3 * rng.standard_normal((1, round(clip_seconds * sample_rate) // hop * hop))
    return wav.astype(np.float32), clip.astype(np.float32)


def run(
    size="full", batch=8, seconds=1.0, clip_seconds=10.0, rounds=5, chunk_frames=500, step=True
):
    """The figures: per task and codec min / median / max seconds, audio-s/s and memory.
    step=False: the codec tasks only (encode, decode, windowed decode)."""
    import torch

    config = f3_config(size)
    sr, hop = int(config.sample_rate), int(config.model.hop)
    wav, clip = inputs(batch, seconds, clip_seconds, sr, hop)
    variables = f3_variables(config)
    tasks, temp, persistent = {}, None, {}
    if step:
        f3, persistent["f3/step"], temp_of = f3_step(config, variables)
        wav_dev = jax.device_put(wav)
        tasks["f3/step"] = lambda: f3(wav_dev)
        temp = lambda: temp_of(wav_dev)
    dac, persistent["dac/step"], dac_n = dac_tasks(size, wav, clip, sr)
    if step:
        tasks["dac/step"] = dac["step"]
    for name, fn in f3_codec(config, variables, clip, chunk_frames).items():
        tasks[f"f3/{name}"] = fn
        if name in dac:
            tasks[f"dac/{name}"] = dac[name]
    raw = round_robin(tasks, rounds)
    audio = {"step": wav.size / sr, "encode": clip.size / sr, "decode": clip.size / sr}
    audio["tokenizer_encode"], audio["tokenizer_decode"] = audio["encode"], audio["decode"]
    rows = {}
    for name, r in raw.items():
        s = stats(r["times"])
        rows[name] = s | {
            "audio_s_per_s": audio[name.split("/")[1]] / s["median"],
            "rss_rise_bytes": r["rise"],
            "persistent_bytes": persistent.get(name, 0),
        }
    f3_params = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
    return {
        "size": size,
        "batch": batch,
        "seconds": seconds,
        "clip_seconds": clip_seconds,
        "rounds": rounds,
        "versions": {"jax": jax.__version__, "torch": torch.__version__},
        "threads": {"torch": torch.get_num_threads(), "cpus": os.cpu_count()},
        "params_m": {"f3": f3_params / 1e6, "dac": dac_n / 1e6},
        "xla_step_temp_bytes": temp() if temp else None,
        "rows": rows,
        "ratios": ratios(rows),
    }


def ratios(rows: dict) -> dict:
    """Peer median / f3_jax median per task (> 1: f3_jax faster), and the windowed decode's
    medians over the direct calls' (> 1: the windows cost that much)."""
    out = {}
    for task in ("step", "encode", "decode"):
        if f"f3/{task}" not in rows:
            continue
        out[f"{task}: dac / f3"] = rows[f"dac/{task}"]["median"] / rows[f"f3/{task}"]["median"]
    for task in ("encode", "decode"):
        out[f"tokenizer {task} / direct {task}"] = (
            rows[f"f3/tokenizer_{task}"]["median"] / rows[f"f3/{task}"]["median"]
        )
    return out


def report(f: dict) -> str:
    mib = lambda b: f"{b / 2**20:8.0f}"
    lines = [
        f"size {f['size']}: f3_jax {f['params_m']['f3']:.2f} M params, DAC encoder+decoder "
        f"{f['params_m']['dac']:.2f} M; step batch {f['batch']} x {f['seconds']} s, codec "
        f"1 x {f['clip_seconds']} s; float32; {f['rounds']} rounds; jax {f['versions']['jax']}, "
        f"torch {f['versions']['torch']} ({f['threads']['torch']} threads, "
        f"{f['threads']['cpus']} CPUs)",
        f"{'task':<20} {'min s':>8} {'median s':>9} {'max s':>8} {'audio-s/s':>10} "
        f"{'RSS rise MiB':>13} {'state MiB':>10}",
    ]
    for name, r in f["rows"].items():
        lines.append(
            f"{name:<20} {r['min']:8.3f} {r['median']:9.3f} {r['max']:8.3f} "
            f"{r['audio_s_per_s']:10.2f} {mib(r['rss_rise_bytes']):>13} "
            f"{mib(r['persistent_bytes']):>10}"
        )
    if f["xla_step_temp_bytes"] is not None:
        lines.append(f"XLA temporaries of the f3 step: {f['xla_step_temp_bytes'] / 2**20:.0f} MiB")
    lines += [f"ratio {k:<34} {v:6.2f}" for k, v in f["ratios"].items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--clip_seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chunk_frames", type=int, default=500)
    p.add_argument("--no_step", action="store_true", help="codec tasks only")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    f = run(a.size, a.batch, a.seconds, a.clip_seconds, a.rounds, a.chunk_frames, not a.no_step)
    print(report(f))
    if a.json:
        with open(a.json, "w") as out:
            json.dump(f, out, indent=1)


if __name__ == "__main__":
    main()
