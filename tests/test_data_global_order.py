"""The global example order: the same global batches for any process count, and resuming a
checkpointed position with another process count or batch size (elastic resume)."""

import json

import numpy as np
import pytest
from etils import epath

from f3_jax.config import data_defaults
from f3_jax.data import DataError, train_dataset
from f3_jax.data.global_order import restore_position
from f3_jax.data.synthetic import tone, write_record_dir

SR = 8000
N = 13  # records: epochs do not line up with global batches


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    utts = [{"wav": tone(0.6, SR, rng), "id": f"u{i:03d}", "text": ""} for i in range(N)]
    root = str(tmp_path_factory.mktemp("corpus"))
    write_record_dir(root, {"train": utts}, sample_rate=SR)
    return root


def _cfg(path):
    c = data_defaults()
    c.path, c.crop_seconds, c.read_threads = path, 0.25, 1
    return c


def _iters(corpus, processes, global_batch, start=0, num_skipped=0):
    return [
        iter(
            train_dataset(
                _cfg(corpus),
                sample_rate=SR,
                batch_size=global_batch // processes,
                seed=3,
                process_index=p,
                process_count=processes,
                start=start,
                num_skipped=num_skipped,
            )
        )
        for p in range(processes)
    ]


def _global_batches(iters, n):
    """n global batches: the processes' rows in process order, as the trainer assembles them."""
    out = []
    for _ in range(n):
        parts = [next(it) for it in iters]
        out.append(
            {
                "id": [u for b in parts for u in b["id"]],
                "audio": np.concatenate([b["audio"] for b in parts]),
            }
        )
    return out


def _assert_same(a, b):
    assert [x["id"] for x in a] == [y["id"] for y in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["audio"], y["audio"])  # same crops, not just records


def _save(iters, directory):
    """What Checkpointer.save writes for the data item: one JSON state per process."""
    directory.mkdir(parents=True, exist_ok=True)
    for p, it in enumerate(iters):
        state = json.dumps(it.get_state())
        (directory / f"process_{p}-of-{len(iters)}.json").write_text(state)


@pytest.mark.parametrize("processes", [2, 4])
def test_global_batches_do_not_depend_on_the_process_count(corpus, processes):
    _assert_same(
        _global_batches(_iters(corpus, processes, 4), 7), _global_batches(_iters(corpus, 1, 4), 7)
    )


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4)])
def test_resume_with_another_process_count_continues_where_it_was(corpus, tmp_path, before, after):
    straight = _global_batches(_iters(corpus, 1, 4), 9)
    old = _iters(corpus, before, 4)
    _assert_same(_global_batches(old, 5), straight[:5])
    _save(old, epath.Path(tmp_path))
    positions = [restore_position(epath.Path(tmp_path), p, after, 4) for p in range(after)]
    assert {start for start, _, _ in positions} == {5 * 4}
    assert all(state is None for _, state, _ in positions)  # nothing to set: a fresh stream
    _assert_same(_global_batches(_iters(corpus, after, 4, start=5 * 4), 4), straight[5:])


def test_resume_with_the_same_process_count_restores_each_state(corpus, tmp_path):
    old = _iters(corpus, 2, 4)
    _global_batches(old, 3)
    _save(old, epath.Path(tmp_path))
    want = _global_batches(old, 3)
    new = []
    for p in range(2):
        start, state, _ = restore_position(epath.Path(tmp_path), p, 2, 4)
        it = _iters(corpus, 2, 4, start=start)[p]
        it.set_state(state)
        new.append(it)
    _assert_same(_global_batches(new, 3), want)


def test_a_second_elastic_resume_keeps_the_global_position(corpus, tmp_path):
    straight = _global_batches(_iters(corpus, 1, 4), 8)
    first = _iters(corpus, 2, 4)
    _global_batches(first, 3)
    _save(first, epath.Path(tmp_path / "a"))
    start, _, _ = restore_position(epath.Path(tmp_path / "a"), 0, 1, 4)
    second = _iters(corpus, 1, 4, start=start)
    _assert_same(_global_batches(second, 2), straight[3:5])
    _save(second, epath.Path(tmp_path / "b"))
    positions = [restore_position(epath.Path(tmp_path / "b"), p, 4, 4) for p in range(4)]
    _assert_same(_global_batches(_iters(corpus, 4, 4, start=positions[0][0]), 3), straight[5:])


def test_resume_with_another_global_batch_size_starts_after_what_was_seen(corpus, tmp_path):
    old = _iters(corpus, 2, 4)
    seen = [u for b in _global_batches(old, 3) for u in b["id"]]
    _save(old, epath.Path(tmp_path))
    start, state, _ = restore_position(epath.Path(tmp_path), 0, 2, 6)
    assert state is None and start == 12
    order = [u for b in _global_batches(_iters(corpus, 1, 1), 24) for u in b["id"]]
    nxt = _global_batches(_iters(corpus, 2, 6, start=start), 1)[0]["id"]
    assert seen == order[:12] and nxt == order[12:18]


def test_skipped_counts_carry_over_to_process_zero(tmp_path):
    rng = np.random.default_rng(1)
    utts = [{"wav": tone(0.6, SR, rng), "id": f"u{i:03d}", "text": ""} for i in range(8)]
    utts.insert(3, {"raw": b"garbage record"})
    root = tmp_path / "bad"
    write_record_dir(str(root), {"train": utts}, sample_rate=SR)
    old = _iters(str(root), 2, 2)
    _global_batches(old, 9)  # a full epoch: the bad record came up once
    _save(old, epath.Path(tmp_path / "ckpt"))
    total = sum(json.loads(p.read_text())["num_skipped"] for p in (tmp_path / "ckpt").glob("*"))
    assert total >= 1
    positions = [restore_position(epath.Path(tmp_path / "ckpt"), p, 2, 4) for p in range(2)]
    assert [skipped for _, _, skipped in positions] == [total, 0]  # global batch 4: elastic
    start = positions[0][0]
    carried = next(_iters(str(root), 1, 2, start=start, num_skipped=total)[0])["num_skipped"]
    fresh = next(_iters(str(root), 1, 2, start=start)[0])["num_skipped"]
    assert int(carried) - int(fresh) == total


def test_old_states_without_positions_need_the_same_process_count(tmp_path):
    for p in range(2):
        (tmp_path / f"process_{p}-of-2.json").write_text(json.dumps({"num_skipped": 0}))
    with pytest.raises(DataError, match="resume it with 2 processes"):
        restore_position(epath.Path(tmp_path), 0, 1, 4)
    with pytest.raises(DataError, match="missing"):
        (tmp_path / "process_1-of-2.json").unlink()
        restore_position(epath.Path(tmp_path), 0, 1, 4)
