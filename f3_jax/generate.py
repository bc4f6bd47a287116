"""python -m f3_jax.generate --workdir DIR --text "..." --out OUT.wav [--prompt_audio IN.wav]

Speaks a text (or continues a prompt audio) with a trained stage-3 workdir, whose export holds
the flow and stop heads and copies of the frozen stages 1 and 2; the LLM comes from the
config's llm.path (or --llm). The inputs are checked before the models load. It generates once
and prints the length, what ended it, and the speed in × real time (seconds of audio per
second), without and with the compilation a first call pays.
"""

from __future__ import annotations

import os

from absl import flags

from f3_jax import cli
from f3_jax.data.audio_io import read_audio, write_audio
from f3_jax.errors import UsageError

_WORKDIR = flags.DEFINE_string("workdir", None, "Stage-3 training workdir (its export/).")
_TEXT = flags.DEFINE_string("text", "", "Text to speak (with --prompt_audio: may be empty).")
_OUT = flags.DEFINE_string("out", None, "Output audio file (.wav or .flac).")
_PROMPT = flags.DEFINE_string("prompt_audio", None, "Audio to continue.")
_STEPS = flags.DEFINE_integer("steps", None, "Flow sampler steps (default: config).")
_CFG = flags.DEFINE_float("cfg", None, "Classifier-free guidance scale (default: config).")
_TEMP = flags.DEFINE_float("temperature", None, "Initial noise scale (default: config).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_MAX = flags.DEFINE_float("max_seconds", None, "Length cap (default: config).")
_LLM = flags.DEFINE_string("llm", None, "LLM weights, if not at the config's llm.path.")

USAGE = (
    'usage: python -m f3_jax.generate --workdir DIR --text "..." --out OUT.wav '
    "[--prompt_audio IN.wav] [--steps N] [--cfg S] [--seed K]"
)
OUTPUT_FORMATS = (".wav", ".flac", ".ogg")


def check_inputs() -> tuple:
    """The flags and input files, checked before anything loads: (prompt, its rate)."""
    if not _WORKDIR.value or not _OUT.value or not (_TEXT.value or _PROMPT.value):
        raise UsageError(USAGE)
    if not os.path.isdir(_WORKDIR.value) and "://" not in _WORKDIR.value:
        raise UsageError(f"--workdir={_WORKDIR.value}: no such directory")
    if not _OUT.value.lower().endswith(OUTPUT_FORMATS):
        raise UsageError(f"--out={_OUT.value}: use one of {', '.join(OUTPUT_FORMATS)}")
    out_dir = os.path.dirname(os.path.abspath(_OUT.value))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out={_OUT.value}: directory {out_dir} does not exist")
    if _MAX.value is not None and not _MAX.value > 0:
        raise UsageError(f"--max_seconds={_MAX.value} must be > 0")
    if _STEPS.value is not None and _STEPS.value < 1:
        raise UsageError(f"--steps={_STEPS.value} must be at least 1")
    if not _PROMPT.value:
        return None, None
    return read_audio(_PROMPT.value)  # AudioDecodeError names the file


def main(argv) -> None:
    del argv
    prompt, rate = check_inputs()
    from f3_jax.inference.generator import Generator  # jax and the models: after the checks
    from f3_jax.progress import CompileClock

    CompileClock.start()
    gen, params = Generator.from_workdir(_WORKDIR.value, _LLM.value)
    max_patches = None
    if _MAX.value:
        max_patches = max(1, int(_MAX.value * gen.config.sample_rate / gen.ae.hop) // gen.patch)
    compiled_before = CompileClock.seconds()
    out = gen.generate(
        params,
        _TEXT.value,
        prompt_audio=prompt,
        prompt_sample_rate=rate,
        num_steps=_STEPS.value,
        guidance_scale=_CFG.value,
        temperature=_TEMP.value,
        seed=_SEED.value,
        max_patches=max_patches,
    )
    compiling = min(CompileClock.seconds() - compiled_before, out["wall_seconds"])
    write_audio(_OUT.value, out["audio"], gen.config.sample_rate)
    reason = "the stop head" if out["stopped"] else "the length cap"
    running = max(out["wall_seconds"] - compiling, 1e-9)
    print(
        f"{_OUT.value}: {out['seconds']:.2f} s of audio, {out['num_patches']} patches, ended by "
        f"{reason}; {out['wall_seconds']:.2f} s wall, of which {compiling:.2f} s compiling: "
        f"{out['seconds'] / running:.2f}x real time without compilation "
        f"({out['x_real_time']:.2f}x with)"
    )


if __name__ == "__main__":
    cli.run(main)
