"""python -m f3_jax.tokenize encode IN.wav OUT.npy --workdir DIR
   python -m f3_jax.tokenize decode IN.npy OUT.wav --workdir DIR
   python -m f3_jax.tokenize represent IN.wav OUT.npy --workdir STAGE2_DIR

Audio files in any format f3_jax.data.audio_io reads (resampled to the model's rate); latents
as (T, D) float32 .npy files. Decoding writes T * hop samples at the model's rate: encoding pads
the input to whole frames, so a round trip is up to hop - 1 samples longer than the input.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from absl import app, flags

from f3_jax.data.audio_io import load_audio, write_audio
from f3_jax.tokenizer import Tokenizer

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (its export or checkpoints).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest export).")
_CHUNK = flags.DEFINE_integer("chunk_frames", 500, "Latent frames per window (memory vs speed).")

USAGE = (
    "usage: python -m f3_jax.tokenize {encode IN.wav OUT.npy | decode IN.npy OUT.wav | "
    "represent IN.wav OUT.npy} --workdir DIR"
)


def main(argv: list[str]) -> None:
    """Encodes or decodes one file; prints the shapes and the speed."""
    if len(argv) != 4 or argv[1] not in ("encode", "decode", "represent") or not _WORKDIR.value:
        sys.exit(USAGE)
    command, src, dst = argv[1:]
    tok = Tokenizer.from_checkpoint(_WORKDIR.value, step=_STEP.value, chunk_frames=_CHUNK.value)
    start = time.perf_counter()
    if command in ("encode", "represent"):
        wav = load_audio(src, tok.sample_rate)
        z = tok.encode(wav) if command == "encode" else tok.represent(wav)
        np.save(dst, z.astype(np.float32))
        seconds = len(wav) / tok.sample_rate
        name = "latents" if command == "encode" else "representations"
        print(f"{src}: {seconds:.2f} s -> {name} {z.shape} in {dst}")
    else:
        z = np.load(src, allow_pickle=False)
        if z.ndim != 2 or z.shape[1] != tok.latent_dim:
            sys.exit(f"{src}: latents of shape {z.shape}, expected (T, {tok.latent_dim})")
        wav = tok.decode(z)
        write_audio(dst, wav, tok.sample_rate)
        seconds = len(wav) / tok.sample_rate
        print(f"{src}: latents {z.shape} -> {seconds:.2f} s of audio in {dst}")
    elapsed = time.perf_counter() - start
    print(f"{elapsed:.2f} s wall, {seconds / max(elapsed, 1e-9):.1f}x real time (incl. compile)")


if __name__ == "__main__":
    app.run(main)
