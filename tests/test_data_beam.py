"""prepare --engine beam (DirectRunner): the same records and skipped list as the local engine
over good and bad files, a rerun after a failed shard writes only what is missing, and gs://
inputs, manifests and outputs (the fake bucket of tests/test_storage.py) for both engines."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
from array_record.python import array_record_data_source

from f3_jax.data import beam_prepare, records
from f3_jax.data.prepare import main as prepare_main
from f3_jax.data.prepare import prepare
from f3_jax.data.synthetic import tone
from tests.test_storage import fake_gcs  # noqa: F401  (the fixture)

pytest.importorskip("apache_beam")

BEAM = ("--runner=DirectRunner",)


def mixed_folder(root) -> dict[str, str]:
    """Good files of several rates, channel counts and formats, and bad ones. Returns
    {relative path: why it is bad} for the bad ones."""
    rng = np.random.default_rng(0)
    good = [
        ("a/mono16k.wav", 16000, 1, "PCM_16"),
        ("a/stereo44k.flac", 44100, 2, "PCM_16"),
        ("b/mono24k.ogg", 24000, 1, "VORBIS"),
        ("b/stereo8k.wav", 8000, 2, "FLOAT"),
        ("b/c/mono22k.flac", 22050, 1, "PCM_24"),
    ]
    for rel, rate, channels, subtype in good:
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        wav = tone(rng.uniform(0.3, 0.7), rate, rng, channels=channels)
        sf.write(os.path.join(root, rel), wav, rate, subtype=subtype)
    (root / "a" / "mono16k.normalized.txt").write_text("A normalized transcript.")
    (root / "empty.wav").write_bytes(b"")
    (root / "garbage.flac").write_bytes(bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    sf.write(root / "nan.wav", np.full(4000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(root / "short.wav", tone(0.02, 16000, rng), 16000)
    return {"empty.wav": "", "garbage.flac": "", "nan.wav": "NaN", "short.wav": "too short"}


def _shards(out) -> dict[str, bytes]:
    """{shard name: its records, concatenated with their lengths} of a local output."""
    info = json.loads((out / "dataset_info.json").read_text())
    got = {}
    for name in info["splits"]["train"]["shards"]:
        src = array_record_data_source.ArrayRecordDataSource([str(out / name)])
        got[name] = [src[i] for i in range(len(src))]
    return got


def _split(out) -> dict:
    return json.loads((out / "dataset_info.json").read_text())["splits"]["train"]


def test_beam_writes_what_the_local_engine_writes_and_resumes_a_failed_run(tmp_path, monkeypatch):
    inp = tmp_path / "in"
    bad = mixed_folder(inp)
    local = prepare(str(inp), str(tmp_path / "local"), workers=0, num_shards=3)
    assert sorted(
        os.path.relpath(s["path"], inp) for s in local["splits"]["train"]["skipped"]
    ) == sorted(bad)

    calls = []
    real = beam_prepare.write_shard

    def failing(root, name, *args):
        calls.append(name)
        if len(calls) == 2:  # the second shard a worker writes: after one is complete
            raise RuntimeError("injected failure")
        return real(root, name, *args)

    monkeypatch.setattr(beam_prepare, "write_shard", failing)
    out = tmp_path / "beam"
    argv = ["--input", str(inp), "--output", str(out), "--engine", "beam", "--num_shards", "3"]
    with pytest.raises(Exception, match="injected failure"):
        prepare_main([*argv, "--runner", "DirectRunner"])
    assert not (out / "dataset_info.json").exists()  # not listed: a shard is missing
    done = sorted(p.name for p in (out / "train").glob("*.array_record"))
    assert len(done) == 1
    stamps = {n: (out / "train" / n).stat().st_mtime_ns for n in done}

    monkeypatch.setattr(beam_prepare, "write_shard", real)
    calls.clear()
    info, counts = _run_beam(inp, out)
    assert counts["shards_reused"] == 1 and counts["shards_written"] == 2
    assert {n: (out / "train" / n).stat().st_mtime_ns for n in done} == stamps
    assert _shards(out) == _shards(tmp_path / "local")  # the same ids and samples, bytes
    assert _split(out) == _split(tmp_path / "local")  # counts, hours, skipped with reasons
    reasons = {os.path.basename(s["path"]): s["reason"] for s in _split(out)["skipped"]}
    assert "NaN" in reasons["nan.wav"] and "too short" in reasons["short.wav"]
    assert not (out / beam_prepare.PLAN_DIR).exists()


def _run_beam(inp, out, **kw):
    from f3_jax.data.prepare import prepare_split

    args = dict(
        split="train", manifest=None, sample_rate=24000, num_shards=3, encoding="flac",
        workers=0, min_seconds=0.1, overwrite=False, engine="beam", pipeline_args=BEAM,
    )  # fmt: skip
    return prepare_split(str(inp), str(out), **(args | kw))


def _upload(fake, local_root, prefix):
    for d, _, names in os.walk(local_root):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), local_root)
            with open(os.path.join(d, n), "rb") as f:
                fake.publish(f"{prefix}/{rel}", f.read())


def _remote_records(fake, prefix, tmp_path) -> dict[str, tuple]:
    info = json.loads(fake.objects[f"{prefix}/dataset_info.json"])
    out = {}
    for name in info["splits"]["train"]["shards"]:
        local = tmp_path / "dl" / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(fake.objects[f"{prefix}/{name}"])
        src = array_record_data_source.ArrayRecordDataSource([str(local)])
        for i in range(len(src)):
            u = records.decode(src[i])
            out[u.uid] = (u.text, u.labels, u.read().tobytes())
    return out


def test_gs_inputs_manifests_and_outputs_for_both_engines(fake_gcs, tmp_path):  # noqa: F811
    inp = tmp_path / "in"
    mixed_folder(inp)
    manifest = [{"path": "a/stereo44k.flac", "text": "from the manifest", "speed": 1.25}]
    (inp / "m.jsonl").write_text("\n".join(json.dumps(m) for m in manifest))
    _upload(fake_gcs, inp, "bucket/audio")
    reference = prepare(str(inp), str(tmp_path / "ref"), workers=0, manifest=str(inp / "m.jsonl"))
    want = _remote_records_local(tmp_path / "ref")
    assert want["a/stereo44k"][:2] == ("from the manifest", {"speed": 1.25})
    assert want["a/mono16k"][0] == "A normalized transcript."

    # Local engine: gs:// input (a glob) and manifest, gs:// output.
    info = prepare(
        "gs://bucket/audio/*/*.*", "gs://bucket/local", workers=0,
        manifest="gs://bucket/audio/m.jsonl",
    )  # fmt: skip
    got = _remote_records(fake_gcs, "bucket/local", tmp_path / "l")
    assert {k: v for k, v in want.items() if "/c/" not in k} == got  # the glob is one level
    assert info["splits"]["train"]["num_examples"] == len(got)

    # Beam engine: gs:// folder in, gs:// corpus out.
    info, counts = _run_beam(
        "gs://bucket/audio", "gs://bucket/corpus", manifest="gs://bucket/audio/m.jsonl"
    )
    assert _remote_records(fake_gcs, "bucket/corpus", tmp_path / "b") == want
    skipped = sorted(s["path"] for s in info["splits"]["train"]["skipped"])
    assert skipped == sorted(
        f"gs://bucket/audio/{os.path.relpath(s['path'], inp)}"
        for s in reference["splits"]["train"]["skipped"]
    )
    assert counts["files_written"] == len(want) and counts["files_skipped"] == len(skipped)
    assert not [n for n in fake_gcs.objects if beam_prepare.PLAN_DIR in n]


def _remote_records_local(out) -> dict[str, tuple]:
    result = {}
    for recs in _shards(out).values():
        for r in recs:
            u = records.decode(r)
            result[u.uid] = (u.text, u.labels, u.read().tobytes())
    return result


def test_beam_options_need_the_beam_engine(tmp_path, capsys):
    mixed_folder(tmp_path / "in")
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--project=p"]
    assert prepare_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: unrecognized arguments: --project=p (Beam pipeline options need --engine beam)"
    ]
