"""Train and eval pipelines: resume, epoch order, process shards, masks, errors, bad records."""

import json

import numpy as np
import pytest

from f3_jax.config import data_defaults
from f3_jax.data import DataError, ensure_dataset, eval_batches, train_dataset
from f3_jax.data.synthetic import tone, write_record_dir

SR = 8000


def _utts(n, seed=0, seconds=(0.4, 1.5)):
    rng = np.random.default_rng(seed)
    return [
        {
            "wav": tone(rng.uniform(*seconds), SR, rng),
            "id": f"u{i:03d}",
            "text": f"text {i}",
            "labels": {"rate": float(i)},
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpus"))
    write_record_dir(root, {"train": _utts(11), "valid": _utts(7, seed=1)}, sample_rate=SR)
    return root


def _cfg(path, **kw):
    c = data_defaults()
    c.path = path
    c.crop_seconds = 0.25
    c.read_threads = 2
    c.eval_bucket_seconds = (0.5, 1.0, 2.0)
    for k, v in kw.items():
        c[k] = v
    return c


def _ds(cfg, batch_size=3, seed=0, pi=0, pc=1, **kw):
    return train_dataset(
        cfg,
        sample_rate=SR,
        batch_size=batch_size,
        seed=seed,
        process_index=pi,
        process_count=pc,
        **kw,
    )


def _ids(it, n):
    return [uid for _ in range(n) for uid in next(it)["id"]]


def test_batch_contents(corpus):
    b = next(iter(_ds(_cfg(corpus, crop_seconds=1.0))))
    assert b["audio"].shape == b["mask"].shape == (3, SR) and b["audio"].dtype == np.float32
    assert b["text"].shape == b["id"].shape == (3,) and b["num_skipped"].dtype == np.int64
    assert np.abs(b["audio"]).max() <= 1.0
    assert np.all(b["audio"][b["mask"] == 0] == 0)
    assert set(np.unique(b["mask"])) <= {0.0, 1.0}


def test_resume_yields_the_same_next_batches(corpus):
    ds = _ds(_cfg(corpus))
    it = iter(ds)
    for _ in range(5):  # crosses the first epoch boundary (11 records, batches of 3)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    want = [next(it) for _ in range(4)]
    it2 = iter(ds)
    it2.set_state(state)
    for a in want:
        b = next(it2)
        np.testing.assert_array_equal(a["audio"], b["audio"])
        assert list(a["id"]) == list(b["id"]) and a["num_skipped"] == b["num_skipped"]
    fresh = iter(ds)  # and a fresh iterator does not yield those batches
    assert not np.array_equal(next(fresh)["audio"], want[0]["audio"])


def test_first_epoch_order_does_not_depend_on_num_epochs(corpus):
    firsts = [_ids(iter(_ds(_cfg(corpus), batch_size=1, num_epochs=e)), 11) for e in (None, 1, 3)]
    assert firsts[0] == firsts[1] == firsts[2]
    assert sorted(firsts[0]) == [f"u{i:03d}" for i in range(11)]  # each record once
    assert firsts[0] != sorted(firsts[0])  # shuffled
    it = iter(_ds(_cfg(corpus), batch_size=1))
    assert _ids(it, 11) != _ids(it, 11)  # each epoch has its own order
    other_seed = _ids(iter(_ds(_cfg(corpus), batch_size=1, seed=1)), 11)
    assert other_seed != firsts[0]


def test_processes_get_disjoint_rows_of_the_same_global_batches(corpus):
    # 11 records, 2 processes of 1 row: 5 whole global batches, the 11th record is dropped.
    per = [_ids(iter(_ds(_cfg(corpus), batch_size=1, pi=p, pc=2, num_epochs=1)), 5) for p in (0, 1)]
    assert not set(per[0]) & set(per[1])
    whole = _ids(iter(_ds(_cfg(corpus), batch_size=2, num_epochs=1)), 5)
    assert [uid for pair in zip(*per) for uid in pair] == whole


def test_short_clips_are_padded_with_mask(corpus):
    cfg = _cfg(corpus, crop_seconds=1.4)
    b = next(iter(_ds(cfg, batch_size=11)))
    lengths = b["mask"].sum(axis=1)
    assert lengths.min() < 1.4 * SR and lengths.max() == 1.4 * SR
    for row, n in zip(b["audio"], lengths.astype(int)):
        assert np.all(row[n:] == 0) and np.any(row[:n] != 0)


def test_gain_augmentation_scales_audio(corpus):
    plain = next(iter(_ds(_cfg(corpus))))["audio"]
    quiet = next(iter(_ds(_cfg(corpus, gain_db=(-6.0, -6.0)))))["audio"]
    np.testing.assert_allclose(quiet, plain * 10 ** (-6 / 20), atol=1e-6)


def test_bad_records_are_dropped_and_counted(tmp_path):
    utts = _utts(6)
    utts.insert(2, {"raw": b"garbage record"})
    utts.insert(5, {"raw": b"F3AU\x05\x00\x00\x00{bad}"})
    write_record_dir(str(tmp_path), {"train": utts}, sample_rate=SR)
    it = iter(_ds(_cfg(str(tmp_path)), batch_size=1, num_epochs=1))
    batches = list(it)
    assert sorted(uid for b in batches for uid in b["id"]) == [f"u{i:03d}" for i in range(6)]
    assert batches[-1]["num_skipped"] == 2


def test_missing_or_empty_dir_and_long_crop_errors(tmp_path, corpus):
    missing = str(tmp_path / "nope")
    with pytest.raises(DataError, match="nope.*does not exist"):
        ensure_dataset(_cfg(missing), SR)
    with pytest.raises(DataError, match="nope"):
        _ds(_cfg(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*is empty"):
        ensure_dataset(_cfg(str(tmp_path / "empty")), SR)
    ensure_dataset(_cfg(corpus), SR)  # a prepared dir passes
    with pytest.raises(DataError, match="crop_seconds=5.0"):
        _ds(_cfg(corpus, crop_seconds=5.0))


def test_eval_batches_fixed_shapes_labels_and_padding(corpus):
    cfg = _cfg(corpus)
    batches = list(eval_batches(cfg, sample_rate=SR, split="valid", batch_size=2))
    lengths = {b["audio"].shape[1] for b in batches}
    assert lengths <= {round(s * SR) for s in cfg.eval_bucket_seconds}
    ids = [u for b in batches for u, v in zip(b["id"], b["valid"]) if v]
    assert sorted(ids) == [f"u{i:03d}" for i in range(7)]
    for b in batches:
        assert b["audio"].shape[0] == b["valid"].shape[0] == b["label_rate"].shape[0] == 2
        for row, m, v in zip(b["audio"], b["mask"], b["valid"]):
            assert (m.sum() > 0) == bool(v) and np.all(row[m == 0] == 0)
    labels = {
        u: lab for b in batches for u, lab, v in zip(b["id"], b["label_rate"], b["valid"]) if v
    }
    assert labels == {f"u{i:03d}": float(i) for i in range(7)}
    assert sum(b["valid"].sum() for b in batches) == 7  # dummy rows are masked out
    again = list(eval_batches(cfg, sample_rate=SR, split="valid", batch_size=2))
    assert all(np.array_equal(a["audio"], b["audio"]) for a, b in zip(batches, again))


def test_eval_batches_agree_across_processes(corpus):
    cfg = _cfg(corpus)
    per = [
        list(
            eval_batches(
                cfg, sample_rate=SR, split="valid", batch_size=2, process_index=p, process_count=2
            )
        )
        for p in (0, 1)
    ]
    assert [b["audio"].shape for b in per[0]] == [b["audio"].shape for b in per[1]]
    ids = [{u for b in bs for u, v in zip(b["id"], b["valid"]) if v} for bs in per]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 7
    few = list(eval_batches(cfg, sample_rate=SR, split="valid", batch_size=2, max_examples=3))
    assert sum(b["valid"].sum() for b in few) == 3


def test_a_split_smaller_than_a_batch_gets_just_enough_rows(corpus):
    """Evaluating 3 clips with eval_batch_size=8 runs 3 rows (4 on two devices), not 8; a
    bucket of more than one batch keeps full batches; processes agree on the shapes."""
    cfg = _cfg(corpus, eval_bucket_seconds=(2.0,))  # one bucket holds every clip

    def shapes(**kw):
        batches = list(eval_batches(cfg, sample_rate=SR, split="valid", **kw))
        if "process_count" not in kw:
            assert sum(b["valid"].sum() for b in batches) == min(7, kw.get("max_examples") or 7)
        return [b["audio"].shape[0] for b in batches]

    assert shapes(batch_size=8, max_examples=3) == [3]
    assert shapes(batch_size=8, max_examples=3, row_multiple=2) == [4]
    assert shapes(batch_size=8) == [7]
    assert shapes(batch_size=4) == [4, 4]  # more than one batch: full batches
    per = [shapes(batch_size=8, max_examples=3, process_index=p, process_count=2) for p in (0, 1)]
    assert per == [[2], [2]]


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(corpus):
    want = [next(it) for it in [iter(_ds(_cfg(corpus)))] for _ in range(4)]
    it = iter(_ds(_cfg(corpus, num_workers=2)))
    try:
        got = [next(it) for _ in range(4)]
        state = it.get_state()
        nxt = next(it)
    finally:
        it.close()
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a["audio"], b["audio"])
    it2 = iter(_ds(_cfg(corpus, num_workers=2)))
    try:
        it2.set_state(state)
        np.testing.assert_array_equal(next(it2)["audio"], nxt["audio"])
    finally:
        it2.close()
