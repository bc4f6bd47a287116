"""python -m f3_jax.tokenize encode IN.wav OUT.npy --workdir DIR
   python -m f3_jax.tokenize decode IN.npy OUT.wav --workdir DIR
   python -m f3_jax.tokenize represent IN.wav OUT.npy --workdir STAGE2_DIR

Audio files in any format f3_jax.data.audio_io reads (resampled to the model's rate); latents
as (T, D) float32 .npy files. Decoding writes T * hop samples at the model's rate: encoding pads
the input to whole frames, so a round trip is up to hop - 1 samples longer than the input.

Files stream block by block (`Tokenizer.encode_file` / `decode_file` / `represent_file`): memory
does not grow with duration, but for `represent`'s KV cache. An input that cannot be used (an
undecodable or empty audio file; a .npy that is not a (T >= 1, D) array of finite floats) is one
line on stderr and exit status 2, and leaves no output file.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from absl import flags

from f3_jax import cli
from f3_jax.data.audio_io import AudioBlocks, audio_blocks
from f3_jax.data.errors import DataError
from f3_jax.data.latent_io import LatentFile
from f3_jax.errors import UsageError

if TYPE_CHECKING:  # imported in main, after the input is checked: jax takes seconds to load
    from f3_jax.inference.tokenizer import Tokenizer

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (its export or checkpoints).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest export).")
_CHUNK = flags.DEFINE_integer("chunk_frames", 500, "Latent frames per window (memory vs speed).")

USAGE = (
    "usage: python -m f3_jax.tokenize {encode IN.wav OUT.npy | decode IN.npy OUT.wav | "
    "represent IN.wav OUT.npy} --workdir DIR"
)


def run(
    tok: Tokenizer, command: str, source: AudioBlocks | LatentFile, dst: str
) -> tuple[str, float]:
    """Runs one command on one opened input: (what it wrote, in words; seconds of audio)."""
    if command == "decode":
        samples = tok.decode_file(source, dst)
        seconds = samples / tok.sample_rate
        return f"latents {source.shape} -> {seconds:.2f} s of audio", seconds
    if command == "encode":
        frames, width = tok.encode_file(source, dst)
        name = "latents"
    else:
        frames, width = tok.represent_file(source, dst)
        name = "representations"
    seconds = frames * tok.hop / tok.sample_rate
    return f"{seconds:.2f} s -> {name} ({frames}, {width})", seconds


def _bad_input(command: str, error: Exception) -> DataError:
    # A bad input is the user's to fix: what and where, on one line (f3_jax.cli prints it).
    return DataError(f"tokenize {command}: {' '.join(str(error).split())}")


def main(argv: list[str]) -> None:
    """Encodes, decodes or represents one file; prints the shapes and the speed."""
    if len(argv) != 4 or argv[1] not in ("encode", "decode", "represent") or not _WORKDIR.value:
        raise UsageError(USAGE)
    command, src, dst = argv[1:]
    try:  # the input first: a bad one fails in a second, before jax and the model load
        source = LatentFile(src) if command == "decode" else audio_blocks(src)
    except (DataError, OSError) as e:
        raise _bad_input(command, e) from e
    from f3_jax.inference.tokenizer import Tokenizer

    tok = Tokenizer.from_checkpoint(_WORKDIR.value, step=_STEP.value, chunk_frames=_CHUNK.value)
    start = time.perf_counter()
    try:
        done, seconds = run(tok, command, source, dst)
    except (DataError, OSError) as e:
        raise _bad_input(command, e) from e
    elapsed = time.perf_counter() - start
    print(f"{src}: {done} in {dst}")
    print(f"{elapsed:.2f} s wall, {seconds / max(elapsed, 1e-9):.1f}x real time (incl. compile)")


if __name__ == "__main__":
    cli.run(main)
