"""prepare CLI: round trip, resampling, bad files, transcripts, resume."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr
from array_record.python import array_record_data_source

from f3_jax.data import DataError, records
from f3_jax.data import prepare as prepare_lib
from f3_jax.data.prepare import main as prepare_main
from f3_jax.data.prepare import prepare
from f3_jax.data.synthetic import tone, write_wav_dir


def _read_split(out, split="train"):
    info = json.load(open(os.path.join(out, "dataset_info.json")))
    paths = [os.path.join(out, s) for s in info["splits"][split]["shards"]]
    src = array_record_data_source.ArrayRecordDataSource(paths)
    return info, {u.uid: u for u in (records.decode(src[i]) for i in range(len(src)))}


@pytest.mark.parametrize("fmt", ["pcm16", "flac"])
def test_round_trip_matches_soxr_within_int16(tmp_path, fmt):
    rng = np.random.default_rng(0)
    src = {}
    for i in range(3):
        wav = tone(1.0 + 0.37 * i, 16000, rng, channels=2)  # stereo 16 kHz
        sf.write(tmp_path / f"in{i}.wav", wav, 16000, subtype="FLOAT")
        src[f"in{i}"] = wav
    out = str(tmp_path / "out")
    assert (
        prepare_main(
            [
                "--input",
                str(tmp_path / "*.wav"),
                "--output",
                out,
                "--format",
                fmt,
                "--workers",
                "0",
                "--num_shards",
                "2",
            ]
        )
        == 0
    )
    info, utts = _read_split(out)
    assert info["sample_rate"] == 24000 and info["encoding"] == fmt
    assert sorted(utts) == sorted(src)
    for uid, wav in src.items():
        want = soxr.resample(wav.mean(axis=1), 16000, 24000)
        got = utts[uid].read()
        assert utts[uid].sample_rate == 24000 and got.shape == want.shape
        np.testing.assert_allclose(got, np.clip(want, -1, 1), atol=0.6 / 32767, rtol=0)
    assert info["splits"]["train"]["hours"] == pytest.approx(
        sum(len(w) for w in src.values()) / 16000 / 3600, rel=1e-3
    )


def test_bad_files_skipped_with_reasons(tmp_path):
    good = write_wav_dir(str(tmp_path / "in"), 4, seconds=(0.5, 1.0))
    (tmp_path / "in" / "corrupt.wav").write_bytes(b"RIFF\x00\x00not a wave file at all")
    (tmp_path / "in" / "header.flac").write_bytes(b"fLaC" + bytes(40))
    sf.write(tmp_path / "in" / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(tmp_path / "in" / "nan.wav", np.full(800, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "in" / "inf.wav", np.full(800, np.inf, np.float32), 16000, subtype="FLOAT")
    out = str(tmp_path / "out")
    info = prepare(str(tmp_path / "in"), out, workers=2, num_shards=3)
    split = info["splits"]["train"]
    reasons = {os.path.basename(s["path"]): s["reason"] for s in split["skipped"]}
    assert set(reasons) == {"corrupt.wav", "header.flac", "empty.wav", "nan.wav", "inf.wav"}
    assert "empty" in reasons["empty.wav"] and "NaN" in reasons["nan.wav"]
    assert split["num_skipped"] == 5 and split["num_examples"] == len(good)
    _, utts = _read_split(out)
    assert sorted(utts) == sorted(os.path.basename(p)[:-4] for p in good)


def test_transcripts_from_layouts_and_manifest(tmp_path):
    ls = tmp_path / "ls" / "19" / "198"
    write_wav_dir(str(ls), 2, seconds=(0.3, 0.5))
    for i in range(2):
        os.rename(ls / f"clip{i:04d}.wav", ls / f"19-198-{i:04d}.wav")
    (ls / "19-198.trans.txt").write_text("19-198-0000 HELLO THERE\n19-198-0001 GOOD BYE\n")
    tts = tmp_path / "tts"
    write_wav_dir(str(tts), 1, seconds=(0.3, 0.5))
    (tts / "clip0000.normalized.txt").write_text("Normalized text.")
    prepare(str(tmp_path / "ls"), str(tmp_path / "o1"), workers=0)
    _, utts = _read_split(str(tmp_path / "o1"))
    assert {u.text for u in utts.values()} == {"HELLO THERE", "GOOD BYE"}
    prepare(str(tts), str(tmp_path / "o2"), workers=0)
    _, utts = _read_split(str(tmp_path / "o2"))
    assert [u.text for u in utts.values()] == ["Normalized text."]
    man = tmp_path / "m.jsonl"
    line = {"path": "tts/clip0000.wav", "text": "from manifest", "speed": 1.5}
    man.write_text(json.dumps(line) + "\n")
    prepare(str(tts), str(tmp_path / "o3"), manifest=str(man), workers=0, split="valid")
    _, utts = _read_split(str(tmp_path / "o3"), "valid")
    (u,) = utts.values()
    assert u.text == "from manifest" and u.labels == {"speed": 1.5}


def test_resume_redoes_only_missing_shards(tmp_path):
    write_wav_dir(str(tmp_path / "in"), 6, seconds=(0.3, 0.6))
    out = tmp_path / "out"
    prepare(str(tmp_path / "in"), str(out), workers=0, num_shards=3)
    shards = sorted((out / "train").glob("*.array_record"))
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    # Simulate an interruption: the last shard never completed (temp file, no sidecar).
    os.rename(shards[-1], str(shards[-1]) + ".tmp")
    os.remove(str(shards[-1]) + ".json")
    os.remove(out / "dataset_info.json")
    info = prepare(str(tmp_path / "in"), str(out), workers=0, num_shards=3)
    assert info["splits"]["train"]["num_examples"] == 6
    for p in shards[:-1]:
        assert p.stat().st_mtime_ns == stamps[p.name]  # complete shards untouched
    assert shards[-1].exists() and not os.path.exists(str(shards[-1]) + ".tmp")
    assert len(_read_split(str(out))[1]) == 6


def test_no_audio_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no audio files"):
        prepare(str(tmp_path), str(tmp_path / "out"), workers=0)


# ---- bad flags, short clips, existing outputs --------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The prepare CLI as a user runs it: exit code and stderr are what matter here."""
    return subprocess.run(
        [sys.executable, "-m", "f3_jax.data.prepare", "--workers", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def _one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("flag,value", [("--sample_rate", "0"), ("--sample_rate", "-16000")])
def test_non_positive_sample_rate_is_a_usage_error(tmp_path, flag, value):
    write_wav_dir(str(tmp_path / "in"), 1, seconds=(0.3, 0.3))
    out = _cli("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), flag, value)
    _one_line_error(out, flag)
    assert not (tmp_path / "out").exists()


def test_negative_min_seconds_is_a_usage_error(tmp_path):
    write_wav_dir(str(tmp_path / "in"), 1, seconds=(0.3, 0.3))
    out = _cli(
        "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--min_seconds", "-1"
    )
    _one_line_error(out, "--min_seconds")


def test_clips_shorter_than_min_seconds_are_skipped(tmp_path):
    good = write_wav_dir(str(tmp_path / "in"), 2, seconds=(0.3, 0.5))
    sf.write(tmp_path / "in" / "one_sample.wav", np.full(1, 0.1, np.float32), 16000)
    sf.write(tmp_path / "in" / "blip.wav", np.full(800, 0.1, np.float32), 16000)  # 0.05 s
    info = prepare(str(tmp_path / "in"), str(tmp_path / "out"), workers=0)
    split = info["splits"]["train"]
    reasons = {os.path.basename(s["path"]): s["reason"] for s in split["skipped"]}
    assert set(reasons) == {"one_sample.wav", "blip.wav"}, reasons
    assert "too short" in reasons["one_sample.wav"] and "min_seconds" in reasons["blip.wav"]
    assert split["num_skipped"] == 2 and split["num_examples"] == len(good)
    assert split["min_seconds"] >= prepare_lib.DEFAULT_MIN_SECONDS
    # a lower floor keeps the 0.05 s clip, never the 1-sample one (under one 24 kHz hop)
    info = prepare(str(tmp_path / "in"), str(tmp_path / "out2"), workers=0, min_seconds=0.02)
    skipped = [os.path.basename(s["path"]) for s in info["splits"]["train"]["skipped"]]
    assert skipped == ["one_sample.wav"]


def test_default_min_seconds_holds_at_least_one_hop():
    assert prepare_lib.DEFAULT_MIN_SECONDS * 24000 >= 480


def test_existing_split_needs_overwrite(tmp_path):
    write_wav_dir(str(tmp_path / "in"), 2, seconds=(0.3, 0.5))
    common = ("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert _cli(*common).returncode == 0
    stamp = (tmp_path / "out" / "dataset_info.json").stat().st_mtime_ns
    out = _cli(*common)
    _one_line_error(out, str(tmp_path / "out" / "train"), "--overwrite")
    assert (tmp_path / "out" / "dataset_info.json").stat().st_mtime_ns == stamp  # untouched
    # another split into the same directory needs no flag; replacing one does
    assert _cli(*common, "--split", "valid").returncode == 0
    done = _cli(*common, "--overwrite")
    assert done.returncode == 0, done.stderr
    info, utts = _read_split(str(tmp_path / "out"))
    assert len(utts) == 2 and set(info["splits"]) == {"train", "valid"}


def test_foreign_files_in_the_split_directory_need_overwrite(tmp_path):
    """Only files the writer made are replaced without --overwrite (an interrupted run)."""
    write_wav_dir(str(tmp_path / "in"), 2, seconds=(0.3, 0.5))
    (tmp_path / "out" / "train").mkdir(parents=True)
    (tmp_path / "out" / "train" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="notes.txt"):
        prepare(str(tmp_path / "in"), str(tmp_path / "out"), workers=0)
    assert (tmp_path / "out" / "train" / "notes.txt").exists()


def test_interrupted_overwrite_resumes_without_the_flag(tmp_path):
    """An overwrite drops the split from dataset_info first: while its shards are rewritten,
    dataset_info never lists them, so the rerun after an interruption is a plain resume."""
    write_wav_dir(str(tmp_path / "in"), 4, seconds=(0.3, 0.5))
    out = str(tmp_path / "out")
    prepare(str(tmp_path / "in"), out, workers=0, num_shards=2)
    prepare(str(tmp_path / "in"), out, workers=0, split="valid")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prepare_lib, "write_split", interrupt)
        with pytest.raises(KeyboardInterrupt):
            prepare(str(tmp_path / "in"), out, workers=0, num_shards=2, overwrite=True)
    info = json.load(open(os.path.join(out, "dataset_info.json")))
    assert set(info["splits"]) == {"valid"} and info["num_examples"] == 4
    info = prepare(str(tmp_path / "in"), out, workers=0, num_shards=2)
    assert info["splits"]["train"]["num_examples"] == 4


def test_output_that_is_a_file_is_a_clear_error(tmp_path):
    write_wav_dir(str(tmp_path / "in"), 1, seconds=(0.3, 0.3))
    (tmp_path / "out").write_text("not a directory")
    out = _cli("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    _one_line_error(out, str(tmp_path / "out"), "file")
    assert (tmp_path / "out").read_text() == "not a directory"
