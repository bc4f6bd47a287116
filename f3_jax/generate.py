"""python -m f3_jax.generate --workdir DIR --text "..." --out OUT.wav [--prompt_audio IN.wav]

Speaks a text (or continues a prompt audio) with a trained stage-3 workdir, whose export holds
the flow and stop heads and copies of the frozen stages 1 and 2; the LLM comes from the
config's llm.path (or --llm). Prints the length, the stop reason and the real-time factor.
"""

from __future__ import annotations

import sys

from absl import app, flags

from f3_jax.data.audio_io import load_audio, write_audio
from f3_jax.generation import Generator

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


def main(argv) -> None:
    del argv
    if not _WORKDIR.value or not _OUT.value or not (_TEXT.value or _PROMPT.value):
        sys.exit(
            'usage: python -m f3_jax.generate --workdir DIR --text "..." --out OUT.wav '
            "[--prompt_audio IN.wav] [--steps N] [--cfg S] [--seed K]"
        )
    gen, params = Generator.from_workdir(_WORKDIR.value, _LLM.value)
    prompt, rate = None, None
    if _PROMPT.value:
        rate = gen.config.sample_rate
        prompt = load_audio(_PROMPT.value, rate)
    max_patches = None
    if _MAX.value:
        max_patches = max(1, int(_MAX.value * gen.config.sample_rate / gen.ae.hop) // gen.patch)
    for attempt in ("compile", "run"):  # the first call compiles; time the second
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
        if attempt == "compile":
            compile_s = out["wall_seconds"]
    write_audio(_OUT.value, out["audio"], gen.config.sample_rate)
    reason = "stop head" if out["stopped"] else "length cap"
    print(
        f"{_OUT.value}: {out['seconds']:.2f} s of audio, {out['num_patches']} patches, ended by "
        f"the {reason}; {out['wall_seconds']:.2f} s wall = {out['real_time_factor']:.2f}x real "
        f"time (first call with compilation: {compile_s:.1f} s)"
    )


if __name__ == "__main__":
    app.run(main)
