"""Before and after in one run: f3_jax's matched step with the stage-1 layers of a git revision
against the working tree's, and DAC's step beside them (benchmarks/peer_codec.py).

    python benchmarks/ab_layers.py --before stages            # ae_24k size, 3 rounds
    python benchmarks/ab_layers.py --before HEAD~1 --size tiny --batch 2 --seconds 0.2

`--before REV` (repeatable): f3_jax/models/layers.py as it is at REV (read with `git show`),
put in place of the working tree's Snake, WNConv1d and WNConvTranspose1d in the autoencoder
while the "before" step traces; everything else (model, loss, optimizer, data) is shared.
Each step runs once untimed, then `--rounds` rounds of one call each (round robin with DAC's
step when descript-audio-codec is installed: --nopeer leaves it out). Prints min / median /
max, the ratio of each variant to the next (> 1: the change helps) and DAC's to each, and
the differences of the first-step losses (float rounding only, or the change is wrong).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import types

import jax
import numpy as np

try:  # run as a script: benchmarks/ is on sys.path
    import peer_codec
except ImportError:
    from benchmarks import peer_codec
from f3_jax.models import autoencoder

_PATCHED = ("Snake", "WNConv1d", "WNConvTranspose1d")


def layers_at(rev: str) -> types.ModuleType:
    """f3_jax/models/layers.py at git revision `rev`, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:f3_jax/models/layers.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType(f"layers_at_{rev}".replace("~", "_").replace("^", "_"))
    sys.modules[module.__name__] = module  # Flax's dataclasses look their module up
    exec(compile(source, f"{rev}:f3_jax/models/layers.py", "exec"), module.__dict__)
    return module


@contextlib.contextmanager
def layers_in_place(module: types.ModuleType):
    """The autoencoder builds its blocks from `module`'s layers inside the block."""
    saved = {name: getattr(autoencoder, name) for name in _PATCHED}
    try:
        for name in _PATCHED:
            setattr(autoencoder, name, getattr(module, name))
        yield
    finally:
        for name, value in saved.items():
            setattr(autoencoder, name, value)


def run(befores, size="full", batch=8, seconds=1.0, rounds=3, peer=True) -> dict:
    """Steps with the layers of each revision in `befores`, then the working tree's."""
    config = peer_codec.f3_config(size)
    sr, hop = int(config.sample_rate), int(config.model.hop)
    wav, clip = peer_codec.inputs(batch, seconds, 1.0, sr, hop)
    variables = peer_codec.f3_variables(config)
    wav_dev = jax.device_put(wav)
    tasks, first = {}, {}
    for rev in befores:
        with layers_in_place(layers_at(rev)):
            step, _, _ = peer_codec.f3_step(config, variables)
            first[rev] = step(wav_dev)  # traces and compiles with that revision's layers
        tasks[rev] = lambda step=step: step(wav_dev)
    step, _, _ = peer_codec.f3_step(config, variables)
    first["after"] = step(wav_dev)
    tasks["after"] = lambda step=step: step(wav_dev)
    if peer and importlib.util.find_spec("dac") is not None:
        dac, _, _ = peer_codec.dac_tasks(size, wav, clip, sr)
        for _ in range(peer_codec.WARMUP["dac"]):
            dac["step"]()
        tasks["dac"] = dac["step"]
    times = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, fn in tasks.items():
            times[name].append(peer_codec.timed_call(fn)[0])
    rows = {name: peer_codec.stats(t) for name, t in times.items()}
    med = {name: r["median"] for name, r in rows.items()}
    names = [*befores, "after"]
    ratios = {f"{a} / {b}": med[a] / med[b] for a, b in zip(names, names[1:])}
    if "dac" in med:
        ratios |= {f"dac / {n}": med["dac"] / med[n] for n in names}
    diffs = {f"{a} - {b}": abs(first[a] - first[b]) for a, b in zip(names, names[1:])}
    return {"rows": rows, "ratios": ratios, "first_losses": first, "loss_diffs": diffs}


def report(f: dict) -> str:
    lines = [f"{'step':<22} {'min s':>8} {'median s':>9} {'max s':>8}"]
    for name, r in f["rows"].items():
        name = "after (working tree)" if name == "after" else name
        lines.append(f"{name:<22} {r['min']:8.3f} {r['median']:9.3f} {r['max']:8.3f}")
    lines += [f"ratio {k:<24} {v:6.3f}" for k, v in f["ratios"].items()]
    losses = ", ".join(f"{k} {v:.9g}" for k, v in f["first_losses"].items())
    lines.append(f"first-step losses: {losses}")
    lines += [f"|loss {k}| {v:.3g}" for k, v in f["loss_diffs"].items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--before", action="append", required=True, help="git revision of 'before' layers (repeat)"
    )
    p.add_argument("--size", choices=sorted(peer_codec.SIZES), default="full")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--nopeer", action="store_true")
    a = p.parse_args(argv)
    f = run(a.before, a.size, a.batch, a.seconds, a.rounds, not a.nopeer)
    print(report(f))
    if not all(np.isfinite(v) for v in f["loss_diffs"].values()):
        sys.exit("non-finite losses")


if __name__ == "__main__":
    main()
