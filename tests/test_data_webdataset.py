"""data.source="webdataset": tar shards read as they are, with the guarantees of the
ArrayRecord source (one global order for any process count, exact and elastic resume, bad
samples skipped and counted, deterministic crops), validation from a tar split, and the
tar reader against shards written by the `webdataset` package."""

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
from etils import epath

from f3_jax.config import data_defaults
from f3_jax.data import DataError, eval_batches, train_dataset
from f3_jax.data import tar_shards as ts
from f3_jax.data.global_order import restore_position
from f3_jax.data.sources import open_split
from f3_jax.data.synthetic import tone
from f3_jax.data.webdataset_samples import parse_sample

wds = pytest.importorskip("webdataset")

SR = 8000


def _flac(wav: np.ndarray, rate: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def write_shards(folder, split, n_shards, per_shard, *, seed=0, bad=(), seconds=(0.4, 0.9)):
    """n_shards tars of per_shard samples written by webdataset.TarWriter; keys in `bad` get
    garbage instead of FLAC. Returns {key: wav}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    wavs = {}
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"{split}-{s:03d}.tar")) as w:
            for i in range(per_shard):
                key = f"{split}/s{s}/u{i:02d}"
                wav = tone(rng.uniform(*seconds), SR, rng)
                sample = {"__key__": key, "txt": f"text {key}"}
                sample["json"] = json.dumps({"speed": float(i), "text": "ignored: txt wins"})
                sample["flac"] = b"garbage, not flac" if key in bad else _flac(wav)
                w.write(sample)
                wavs[key] = wav
    return wavs


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    wavs = write_shards(root / "train", "train", 3, 7)
    wavs |= write_shards(root / "valid", "valid", 1, 5, seed=1)
    return root, wavs


def _cfg(path, **kw):
    c = data_defaults()
    c.source, c.path, c.crop_seconds, c.read_threads = "webdataset", str(path), 0.25, 2
    c.shuffle_buffer = 3
    c.eval_bucket_seconds = (0.5, 1.0)
    for k, v in kw.items():
        c[k] = v
    return c


def _iters(cfg, processes, global_batch, **kw):
    return [
        iter(
            train_dataset(
                cfg,
                sample_rate=SR,
                batch_size=global_batch // processes,
                seed=5,
                process_index=p,
                process_count=processes,
                **kw,
            )
        )
        for p in range(processes)
    ]


def _global(iters, n):
    out = []
    for _ in range(n):
        parts = [next(it) for it in iters]
        out.append(
            {
                "id": [u for b in parts for u in b["id"]],
                "audio": np.concatenate([b["audio"] for b in parts]),
                "skipped": sum(int(b["num_skipped"]) for b in parts),
            }
        )
    return out


def _assert_same(a, b):
    assert [x["id"] for x in a] == [y["id"] for y in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["audio"], y["audio"])


# ---- shard lists and the tar reader ------------------------------------------------------


def test_brace_expansion_and_shard_lists(tmp_path):
    assert ts.brace_expand("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert ts.brace_expand("{x,y{1..2}}/{a,b}") == [
        "x/a", "x/b", "y1/a", "y1/b", "y2/a", "y2/b",
    ]  # fmt: skip
    assert ts.brace_expand("{split}") == ["{split}"]
    for name in ("train/a-0.tar", "train/a-1.tar", "valid/a-0.tar"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    train = [str(tmp_path / "train" / f"a-{i}.tar") for i in range(2)]
    assert ts.shard_paths(str(tmp_path / "{split}/a-{0..1}.tar"), "train", "train") == train
    assert ts.shard_paths(str(tmp_path / "{split}/*.tar"), "valid", "train") == [
        str(tmp_path / "valid" / "a-0.tar")
    ]
    assert ts.shard_paths(str(tmp_path), "train", "train") == train  # a folder: <split>/*.tar
    assert ts.shard_paths(",".join(reversed(train)), "train", "train") == train[::-1]
    with pytest.raises(DataError, match=r"\{split\}"):
        ts.shard_paths(train[0], "valid", "train")
    with pytest.raises(DataError, match="no folder test/"):
        ts.shard_paths(str(tmp_path / "train"), "test", "train")


def test_tar_reader_reads_webdataset_shards_from_any_sample(tmp_path):
    long_key = "d" * 120 + "/utt"  # past tar's 100-byte name field: a pax header
    with wds.TarWriter(str(tmp_path / "a.tar")) as w:
        w.write({"__key__": "k0", "flac": b"F0", "txt": "zero"})
        w.write({"__key__": long_key, "flac": b"F1", "json": b"{}"})
        w.write({"__key__": "k2", "wav": b"W2"})
    with open(tmp_path / "a.tar", "rb") as f:
        got = list(ts.iter_samples(f, 0))
        assert [s["__key__"] for _, s in got] == ["k0", long_key, "k2"]
        assert got[0][1] == {"__key__": "k0", "flac": b"F0", "txt": b"zero"}
        ref = got[1][0]  # restart at a sample's offset, and random access to one
        rest = list(ts.iter_samples(f, 0, start=ref.start, first_index=ref.index))
        assert [s for _, s in rest] == [s for _, s in got[1:]]
        assert ts.read_sample(f, got[2][0]) == got[2][1]
        skipped = list(ts.iter_samples(f, 0, want=lambda i: i == 1))
        assert [s is None for _, s in skipped] == [True, False, True]


def test_corrupt_tar_header_is_an_error_not_an_early_end(tmp_path):
    with wds.TarWriter(str(tmp_path / "a.tar")) as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "flac": b"x" * 600})
    third = tarfile.open(tmp_path / "a.tar").getmembers()[2]
    data = bytearray((tmp_path / "a.tar").read_bytes())
    data[third.offset_data - 512 + 10] ^= 0xFF  # its name, in the header before its data
    with pytest.raises(ts.TarError, match="corrupt tar header"):
        list(ts.iter_samples(io.BytesIO(bytes(data)), 0))


def test_parse_sample_text_labels_and_crops(shards):
    root, wavs = shards
    with open(root / "train" / "train-000.tar", "rb") as f:
        (_, sample), *_ = ts.iter_samples(f, 0)
    u = parse_sample(sample)
    assert (u.uid, u.text, u.sample_rate, u.labels) == (
        "train/s0/u00",
        "text train/s0/u00",
        SR,
        {"speed": 0.0},
    )
    want = np.round(np.clip(wavs[u.uid], -1, 1) * 32767) / 32767
    np.testing.assert_allclose(u.read(100, 300), want[100:400], atol=1.01 / 32767)
    sample.pop("txt")
    sample["json"] = b'{"text": "from json", "id": "x"}'
    assert parse_sample(sample).text == "from json"


# ---- training order ------------------------------------------------------------------------


def test_two_processes_read_disjoint_rows_of_the_same_global_batches(shards):
    root, _ = shards
    cfg = _cfg(root / "{split}/{split}-{000..002}.tar")
    one = _global(_iters(cfg, 1, 4), 8)  # 8 x 4 > 21 samples: into the second epoch
    two_iters = _iters(cfg, 2, 4)
    two = _global(two_iters, 8)
    _assert_same(one, two)
    for b in two:  # process 0 has rows 0-1, process 1 rows 2-3: never the same sample
        assert not set(b["id"][:2]) & set(b["id"][2:])
    # 3 shards dealt as 6 half-shards of 3-4 samples to 4 rows: no row repeats a sample in
    # its first 3 draws, and the rows do not read the shards in their stored order.
    first = [u for b in one[:3] for u in b["id"]]
    assert len(set(first)) == 12 and first != sorted(first)
    _assert_same(_global(_iters(cfg, 1, 4), 2), one[:2])  # deterministic, crops included


def test_fewer_shards_than_rows_deal_shards_in_parts(shards):
    root, wavs = shards
    cfg = _cfg(root / "train/train-000.tar", shuffle_buffer=1)  # 1 shard of 7, 4 rows
    batches = _global(_iters(cfg, 1, 4), 2)
    ids = [u for b in batches for u in b["id"]]
    assert len(set(ids[:4])) == 4 and all(u.startswith("train/s0/") for u in ids)


def test_resume_equals_the_uninterrupted_run(shards):
    root, _ = shards
    cfg = _cfg(root / "{split}/{split}-{000..002}.tar")
    reference = _global(_iters(cfg, 2, 4), 9)
    first = _iters(cfg, 2, 4)
    _global(first, 4)
    states = [json.loads(json.dumps(it.get_state())) for it in first]  # as checkpointed
    resumed = _iters(cfg, 2, 4)
    for it, state in zip(resumed, states):
        it.set_state(state)
    _assert_same(_global(resumed, 5), reference[4:])


@pytest.mark.parametrize("before,after", [(2, 1), (1, 4)])
def test_resume_with_another_process_count_continues_every_row(shards, tmp_path, before, after):
    root, _ = shards
    cfg = _cfg(root / "{split}/{split}-{000..002}.tar")
    reference = _global(_iters(cfg, after, 4), 7)
    old = _iters(cfg, before, 4)
    _global(old, 3)
    for p, it in enumerate(old):  # what the checkpoint's data item holds
        (tmp_path / f"process_{p}-of-{before}.json").write_text(json.dumps(it.get_state()))
    new = []
    for p in range(after):
        start, state, skipped = restore_position(epath.Path(tmp_path), p, after, 4)
        it = iter(
            train_dataset(
                cfg, sample_rate=SR, batch_size=4 // after, seed=5, process_index=p,
                process_count=after, start=start, num_skipped=skipped,
            )
        )  # fmt: skip
        it.set_state(state)
        new.append(it)
    _assert_same(_global(new, 4), reference[3:])


def test_corrupt_member_and_shard_are_skipped_and_counted(tmp_path):
    bad = {"train/s1/u03"}
    write_shards(tmp_path, "train", 3, 4, bad=bad)
    (tmp_path / "train-003.tar").write_bytes(b"not a tar at all" * 40)  # a corrupt shard
    cfg = _cfg(tmp_path / "train-{000..003}.tar", shuffle_buffer=2)
    (it,) = _iters(cfg, 1, 1, num_epochs=1)  # one row: it reads every shard
    batches = list(it)
    ids = [u for b in batches for u in b["id"]]
    assert not bad & set(ids) and len(ids) == len(set(ids)) == 11
    assert batches[-1]["num_skipped"] == 2  # the garbage FLAC and the shard that is not a tar


def test_a_bad_sample_does_not_shift_the_other_rows(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_shards(good, "train", 2, 5)
    write_shards(bad, "train", 2, 5, bad={"train/s0/u02"})
    g = _global(_iters(_cfg(good / "train-{000..001}.tar"), 1, 2), 4)
    b = _global(_iters(_cfg(bad / "train-{000..001}.tar"), 1, 2), 4)
    assert "train/s0/u02" in [u for x in g for u in x["id"]]  # the bad one is drawn early
    row = int(g[0]["id"][0].startswith("train/s0"))  # the row reading shard 1
    assert [x["id"][row] for x in g] == [x["id"][row] for x in b]
    assert b[-1]["skipped"] == 1


def test_too_few_samples_for_the_rows_is_a_clear_error(tmp_path):
    write_shards(tmp_path, "train", 1, 2)
    with pytest.raises(DataError, match="fewer samples than the 4 rows"):
        _global(_iters(_cfg(tmp_path / "train-000.tar", shuffle_buffer=1), 1, 4), 3)


def test_missing_shards_and_bad_patterns_are_errors(tmp_path):
    with pytest.raises(DataError, match="missing"):
        _iters(_cfg(tmp_path / "x-{0..1}.tar"), 1, 2)
    with pytest.raises(DataError, match="no .tar shards"):
        _iters(_cfg(tmp_path / "*.tar"), 1, 2)
    with pytest.raises(DataError, match="unbalanced"):
        _iters(_cfg(tmp_path / "x-{0..1.tar"), 1, 2)


# ---- validation ----------------------------------------------------------------------------


def test_eval_batches_from_a_webdataset_split(shards):
    root, wavs = shards
    cfg = _cfg(root / "{split}/{split}-*.tar")
    batches = list(eval_batches(cfg, sample_rate=SR, split="valid", batch_size=4))
    got = {u: t for b in batches for u, t, v in zip(b["id"], b["text"], b["valid"]) if v}
    assert sorted(got) == sorted(k for k in wavs if k.startswith("valid/"))
    assert all(t == f"text {u}" for u, t in got.items())
    assert "label_speed" in batches[0]


def test_truncated_shard_keeps_its_complete_samples(tmp_path):
    write_shards(tmp_path, "train", 1, 4)
    data = (tmp_path / "train-000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    with open(tmp_path / "cut.tar", "rb") as f:
        found = []
        with pytest.raises(ts.TarError, match="truncated"):
            for _, s in ts.iter_samples(f, 0):
                found.append(s["__key__"])
    assert 0 < len(found) < 4
    assert tarfile.is_tarfile(tmp_path / "train-000.tar")


# ---- the train CLI -------------------------------------------------------------------------


def test_train_cli_from_tar_shards_and_resume(cli_setup, tmp_path):
    """The tiny stage-1 config of the train CLI tests (shared compilation cache: these runs
    compile what the CLI tests' reference run needs), its data swapped for tar shards."""
    from tests import cli_runs

    wds_dir = tmp_path / "wds"
    write_shards(wds_dir / "train", "train", 2, 6, seconds=(0.2, 0.5))
    write_shards(wds_dir / "valid", "valid", 1, 4, seed=1, seconds=(0.2, 0.5))
    flags = ("--config.data.source=webdataset", f"--config.data.path={wds_dir}")
    run = tmp_path / "run"
    code, log = cli_runs.run_cli(cli_setup, run, *flags, "--config.train.steps=2", name="a")
    assert code == 0, cli_runs.tail(log)
    assert "step 2/2" in log and "validation at step 2" in log
    assert cli_runs.checkpoint_steps(run) == [2]
    state = json.loads((run / "checkpoints/2/data/process_0-of-1.json").read_text())
    assert state["parent"]["kind"] == "webdataset_lanes" and len(state["parent"]["lanes"]) == 4
    code, log = cli_runs.run_cli(cli_setup, run, *flags, "--config.train.steps=3", name="b")
    assert code == 0, cli_runs.tail(log)
    assert "resuming from" in log and "step 3/3" in log


def test_benchmark_tars_hold_the_flac_records(tmp_path):
    """benchmarks/data_pipeline.py times the webdataset source on tars it writes from the
    FLAC records: they must hold the same clips."""
    from benchmarks.data_pipeline import write_tars
    from f3_jax.data.prepare import prepare
    from f3_jax.data.synthetic import write_wav_dir

    write_wav_dir(str(tmp_path / "wav"), 3, seconds=(0.3, 0.5))
    prepare(str(tmp_path / "wav"), str(tmp_path / "flac"), workers=0)
    pattern = write_tars(str(tmp_path / "flac"), str(tmp_path / "tars"))
    cfg = _cfg(pattern)
    src = open_split(cfg, "train", 24000)
    got = {parse_sample(src.source[i]).uid: parse_sample(src.source[i]) for i in range(3)}
    ref = open_split(_cfg(tmp_path / "flac", source="array_record"), "train", 24000)
    for i in range(3):
        u = ref.parse(ref.source[i])
        np.testing.assert_array_equal(got[u.uid].read(), u.read())
