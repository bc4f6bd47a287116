"""python -m f3_jax.ablate --config configs/X.py --variant NAME:KEY=VALUE,... [...] --steps N
   --out DIR [--set KEY=VALUE ...] [--eval_max_examples N] [--print_only]

Trains each variant of one config for the same number of steps, one after another, evaluates
each one's last checkpoint, and writes the comparison report of all of them:

  python -m f3_jax.ablate --config configs/ae_demo.py --variant f3: \\
      --variant vae:bottleneck.kind=vae --variant plain:bottleneck.kind=plain \\
      --steps 300 --out runs/ablate_bottleneck

A variant is a name, a colon and its config overrides (comma-separated KEY=VALUE, the keys
as after --config.; none for the config as it is). --set adds overrides to every variant
(after the variant's own). Variant NAME trains in DIR/NAME; the report goes to DIR/report/
(python -m f3_jax.compare). Every step is its own process, `python -m f3_jax.train`, then
`python -m f3_jax.eval`, so a variant that is already trained resumes and stops at once, and
DIR/commands.sh holds the commands: with --print_only they are only printed and written, to
run elsewhere (one job per variant on a cluster, then the compare command).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys

from absl import flags, logging

from f3_jax import cli, storage
from f3_jax.errors import UsageError

_CONFIG = _VARIANT = _SET = _STEPS = _OUT = _EVAL_MAX_EXAMPLES = _PRINT_ONLY = None


def define_flags() -> None:
    """The CLI's flags, defined only when run as a program: tests import this module beside
    f3_jax.eval, whose --config would collide."""
    global _CONFIG, _VARIANT, _SET, _STEPS, _OUT, _EVAL_MAX_EXAMPLES, _PRINT_ONLY
    _CONFIG = flags.DEFINE_string("config", None, "The config file every variant starts from.")
    _VARIANT = flags.DEFINE_multi_string("variant", [], "NAME:KEY=VALUE,... (repeat per variant).")
    _SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE applied to every variant.")
    _STEPS = flags.DEFINE_integer("steps", None, "Training steps of every variant.")
    _OUT = flags.DEFINE_string("out", None, "Directory of the variants' workdirs and the report.")
    _EVAL_MAX_EXAMPLES = flags.DEFINE_integer(
        "eval_max_examples", None, "Eval's --max_examples (default: the config's)."
    )
    _PRINT_ONLY = flags.DEFINE_bool("print_only", False, "Print and write the commands; run none.")


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[tuple[str, str], ...]  # (key under config., value as given)


def parse_override(text: str, where: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip().removeprefix("config.")
    if not sep or not _KEY.match(key):
        raise UsageError(f"{where}: {text!r} is not KEY=VALUE (e.g. bottleneck.kind=vae)")
    return key, value.strip()


def parse_variant(text: str) -> Variant:
    """'vae:bottleneck.kind=vae,loss.kl_weight=1e-3' -> Variant('vae', ((key, value), ...))."""
    name, sep, rest = text.partition(":")
    if not sep or not _NAME.match(name):
        raise UsageError(
            f"--variant={text}: write NAME:KEY=VALUE,... (NAME of letters, digits, _ . -)"
        )
    parts = [p for p in rest.split(",") if p.strip()]
    return Variant(name, tuple(parse_override(p, f"--variant={text}") for p in parts))


def _flags(overrides) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides]


def plan(
    config: str, variants: list[Variant], steps: int, out: str, common=(),
    eval_max_examples: int | None = None,
) -> list[list[str]]:  # fmt: skip
    """The commands, in order: per variant train then eval; then compare."""
    names = [v.name for v in variants]
    if len(variants) < 2 or len(set(names)) != len(names):
        raise UsageError(f"give two --variant or more with different names, got {names}")
    python = [sys.executable, "-m"]
    commands = []
    for v in variants:
        workdir = os.path.join(out, v.name)
        overrides = [*_flags(v.overrides), *_flags(common), f"--config.train.steps={steps}"]
        base = ["--config", config, "--workdir", workdir, *overrides]
        commands.append([*python, "f3_jax.train", *base])
        limit = [] if eval_max_examples is None else [f"--max_examples={eval_max_examples}"]
        commands.append([*python, "f3_jax.eval", *base, *limit])
    workdirs = [os.path.join(out, n) for n in names]
    compare = [*python, "f3_jax.compare", *workdirs, "--out", os.path.join(out, "report")]
    commands.append([*compare, "--names", ",".join(names)])
    return commands


def write_commands(out: str, commands: list[list[str]]) -> str:
    path = os.path.join(out, "commands.sh")
    lines = ["#!/bin/sh", "# written by python -m f3_jax.ablate", "set -e"]
    lines += [shlex.join(c) for c in commands]
    storage.ensure_dir(out)
    storage.write_text(path, "\n".join(lines) + "\n")
    return path


def run_commands(commands: list[list[str]]) -> None:
    """Each command in turn, its output on this terminal; stops at the first failure."""
    for i, cmd in enumerate(commands):
        logging.info("[%d/%d] %s", i + 1, len(commands), shlex.join(cmd))
        code = subprocess.run(cmd, check=False).returncode
        if code:
            raise UsageError(f"command {i + 1}/{len(commands)} exited {code}: {shlex.join(cmd)}")


def main(argv) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}: give every variant as --variant")
    if not (_CONFIG.value and _OUT.value and _STEPS.value and _STEPS.value > 0):
        raise UsageError(
            "usage: python -m f3_jax.ablate --config configs/X.py --variant NAME:KEY=VALUE "
            "--variant ... --steps N --out DIR"
        )
    variants = [parse_variant(t) for t in _VARIANT.value]
    common = [parse_override(t, f"--set={t}") for t in _SET.value]
    commands = plan(
        _CONFIG.value, variants, _STEPS.value, _OUT.value, common, _EVAL_MAX_EXAMPLES.value
    )
    path = write_commands(_OUT.value, commands)
    if _PRINT_ONLY.value:
        print("\n".join(shlex.join(c) for c in commands))
        return
    logging.info("%d variants, %d commands (also in %s)", len(variants), len(commands), path)
    run_commands(commands)
    print(os.path.join(_OUT.value, "report", "report.md"))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
