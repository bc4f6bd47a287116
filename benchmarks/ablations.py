"""Before/after figures of each performance option: the train step of one config timed with
every variant of a group of overrides, each in a fresh process (benchmarks/train_step.py).

    python benchmarks/ablations.py --group ae_remat              # one group
    python benchmarks/ablations.py --group all --out /tmp/abl    # every group, JSON kept
    python benchmarks/ablations.py --group repr_remat --extra=--config.train.batch_size=16

A group is a config and its variants; the first variant is the reference the others are
compared with. For each variant the table gives the steady step time, the compile time, XLA's
buffer assignment of the compiled step per device (temporaries: activations kept for the
backward pass and workspace; arguments: state, batch, frozen weights), FLOPs per step and the
achieved FLOP/s (MFU where the device has a peak in train_step.DEVICE_PEAKS). --extra adds
flags to every run of the group (a larger batch on an accelerator; the defaults below are
small enough for a 2-core CPU). On a CPU, compare memory figures, which do not depend on the
machine's load; step times move with it (and bf16 is emulated there, so it is slower than
float32: on a CPU only the memory of a bf16 variant means something).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclass(frozen=True)
class Group:
    config: str
    base: tuple[str, ...]  # flags of every variant (batch size, crop, steps)
    variants: tuple[tuple[str, tuple[str, ...]], ...]  # (name, flags); the first is the reference
    what: str


_SMALL_AE = ("--config.train.batch_size=4", "--config.data.crop_seconds=0.4")
_SMALL_TEXT = (
    "--config.train.batch_size=2",
    "--config.data.eval_batch_size=2",
    "--config.data.crop_seconds=4.0",
)
_BF16_FROZEN = (
    "--config.llm.dtype=bfloat16",
    "--config.llm.param_dtype=bfloat16",
    "--config.autoencoder.dtype=bfloat16",
    "--config.autoencoder.param_dtype=bfloat16",
)

_AE_REMAT = tuple(
    (f"model.remat={p}", (f"--config.model.remat={p}",)) for p in ("none", "dots_saveable", "full")
)

GROUPS = {
    "ae_remat": Group(
        "configs/ae_demo.py",
        _SMALL_AE,
        _AE_REMAT,
        "stage 1: rematerialization of the encoder and decoder blocks",
    ),
    "ae_remat_generator": Group(
        "configs/ae_demo.py",
        ("--config.train.batch_size=2", "--config.data.crop_seconds=2.0", "--noadversarial"),
        _AE_REMAT,
        "stage 1, generator step alone on longer crops: rematerialization of the blocks",
    ),
    "ae_dtype": Group(
        "configs/ae_demo.py",
        _SMALL_AE,
        (
            ("compute float32", ("--config.compute_dtype=float32",)),
            ("compute bfloat16", ("--config.compute_dtype=bfloat16",)),
        ),
        "stage 1: bf16 compute, float32 parameters and optimizer state",
    ),
    "repr_remat": Group(
        "configs/repr_demo.py",
        _SMALL_TEXT,
        (
            ("remat none", ("--config.encoder.remat=none", "--config.llm.remat=none")),
            ("encoder dots_saveable", ("--config.encoder.remat=dots_saveable",)),
            ("encoder full", ("--config.encoder.remat=full",)),
            ("llm full", ("--config.llm.remat=full",)),
            ("encoder + llm full", ("--config.encoder.remat=full", "--config.llm.remat=full")),
        ),
        "stage 2: rematerialization of the encoder blocks and of the frozen LLM's layers "
        "(the gradient flows through the LLM to the adapter)",
    ),
    "repr_scan": Group(
        "configs/repr_demo.py",
        _SMALL_TEXT,
        (
            ("scan encoder + llm", ("--config.encoder.scan_layers=true",)),
            (
                "unrolled encoder + llm",
                ("--config.encoder.scan_layers=false", "--config.llm.scan_layers=false"),
            ),
        ),
        "stage 2: nn.scan over identical transformer layers (compile time, memory)",
    ),
    "repr_dtype": Group(
        "configs/repr_demo.py",
        _SMALL_TEXT,
        (
            ("all float32", ()),
            ("frozen LLM + AE bfloat16", _BF16_FROZEN),
            ("everything bfloat16", (*_BF16_FROZEN, "--config.compute_dtype=bfloat16")),
        ),
        "stage 2: frozen autoencoder and LLM in bf16 (weights and compute), then bf16 compute",
    ),
    "flow_frozen": Group(
        "configs/flow_demo.py",
        _SMALL_TEXT,
        (
            ("audio, frozen float32", ()),
            (
                "audio, frozen bfloat16",
                (
                    *_BF16_FROZEN,
                    "--config.representation.dtype=bfloat16",
                    "--config.representation.param_dtype=bfloat16",
                ),
            ),
            ("latent cache, frozen float32", ("--latents",)),
        ),
        "stage 3: frozen stages in bf16; cached latents instead of the frozen encoder",
    ),
    "flow_remat": Group(
        "configs/flow_demo.py",
        _SMALL_TEXT,
        (
            ("flow_head.remat=none", ("--config.flow_head.remat=none",)),
            ("flow_head.remat=full", ("--config.flow_head.remat=full",)),
        ),
        "stage 3: rematerialization of the flow head's blocks",
    ),
}


def run_variant(
    group: Group, flags_: tuple[str, ...], json_path: str, *, steps: int, extra=(), timeout_s=3600
) -> dict:
    """train_step.py for one variant in its own process; its figures, or {"error": ...}."""
    cmd = [
        sys.executable,
        os.path.join(HERE, "train_step.py"),
        f"--config={group.config}",
        f"--steps={steps}",
        f"--json={json_path}",
        *group.base,
        *extra,
        *flags_,
    ]
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0 or not os.path.exists(json_path):
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    with open(json_path) as f:
        return json.load(f)


def _ratio(value: float, ref: float) -> str:
    return f" ({value / ref:.2f}x)" if ref else ""


def table(group: Group, results: list[tuple[str, dict]]) -> str:
    head = (
        "| variant | step (s) | compile (s) | temporaries (GiB) | arguments (GiB) "
        "| GFLOP/step | GFLOP/s | MFU |\n|---|---|---|---|---|---|---|---|"
    )
    rows, ref = [head], results[0][1]
    for name, f in results:
        if "error" in f:
            rows.append(f"| {name} | failed: {' '.join(f['error'])} | | | | | | |")
            continue
        mfu = f"{100 * f['mfu']:.1f} %" if f.get("mfu") is not None else "n/a"
        r = ref if "error" not in ref else {}
        rows.append(
            f"| {name} | {f['step_s']:.2f}{_ratio(f['step_s'], r.get('step_s'))} "
            f"| {f['compile_s']:.0f} | {f.get('temp_gib', float('nan')):.3f}"
            f"{_ratio(f.get('temp_gib', 0), r.get('temp_gib'))} "
            f"| {f.get('argument_gib', float('nan')):.3f} | {f['flops_per_step'] / 1e9:.1f} "
            f"| {f['achieved_gflops_per_device']:.1f} | {mfu} |"
        )
    first = next((f for _, f in results if "error" not in f), {})
    where = f"{first.get('devices', '?')} x {first.get('device_kind', '?')}"
    return f"{group.what} ({group.config}, {' '.join(group.base)}; {where})\n\n" + "\n".join(rows)


def define_flags() -> None:
    """Only when run as a program (train_step.py defines --steps too)."""
    flags.DEFINE_string("group", None, f"One of {', '.join(GROUPS)}, or all.")
    flags.DEFINE_integer("steps", 2, "Timed steps per variant after the compiling one.")
    flags.DEFINE_multi_string("extra", [], "More train_step.py flags for every variant.")
    flags.DEFINE_string("out", None, "Directory for each variant's JSON (default: temp).")
    flags.DEFINE_integer("timeout_s", 3600, "Seconds allowed per variant.")


def main(argv) -> None:
    del argv
    fv = flags.FLAGS
    names = list(GROUPS) if fv.group == "all" else [fv.group]
    if any(n not in GROUPS for n in names):
        sys.exit(f"--group: one of {', '.join(GROUPS)} or all, not {fv.group!r}")
    out = fv.out or tempfile.mkdtemp(prefix="f3_ablations_")
    os.makedirs(out, exist_ok=True)
    for name in names:
        group = GROUPS[name]
        results = []
        for i, (variant, flags_) in enumerate(group.variants):
            path = os.path.join(out, f"{name}_{i}.json")
            kwargs = {"steps": fv.steps, "extra": fv.extra, "timeout_s": fv.timeout_s}
            results.append((variant, run_variant(group, flags_, path, **kwargs)))
        print(f"\n### {name}\n\n{table(group, results)}\n", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
