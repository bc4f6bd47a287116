"""The TFDS path: the demo corpus builder's output read through tfds.data_source (no TF)."""

import numpy as np
import pytest

from f3_jax.config import data_defaults
from f3_jax.data import DataError, ensure_dataset, eval_batches, train_dataset
from f3_jax.data.synthetic import tone, write_record_dir

pytest.importorskip("tensorflow_datasets")
from f3_jax.data.tfds_demo import LABELS, build_tfds_demo  # noqa: E402

SR = 8000


def _demo_like(n, seed):
    rng = np.random.default_rng(seed)
    return [
        {
            "wav": tone(rng.uniform(0.5, 1.2), SR, rng),
            "id": f"d{seed}-{i}",
            "text": f"utterance {i}",
            "labels": {k: float(i) for k in LABELS},
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    src = str(root / "demo")
    splits = {"train": _demo_like(6, 0), "valid": _demo_like(3, 1), "test": _demo_like(2, 2)}
    write_record_dir(src, splits, sample_rate=SR, extra={"demo": {"seed": 0}})
    build_tfds_demo(src, str(root / "tfds"))
    return str(root / "tfds"), splits


def _cfg(data_dir):
    c = data_defaults()
    c.source = "tfds"
    c.tfds_name = "f3_demo_corpus"
    c.tfds_data_dir = data_dir
    c.crop_seconds = 0.25
    c.eval_bucket_seconds = (1.0, 2.0)
    return c


def test_tfds_train_batches_match_the_records(tfds_dir):
    data_dir, splits = tfds_dir
    it = iter(
        train_dataset(
            _cfg(data_dir),
            sample_rate=SR,
            batch_size=1,
            seed=0,
            process_index=0,
            process_count=1,
            num_epochs=1,
        )
    )
    batches = list(it)
    assert sorted(b["id"][0] for b in batches) == sorted(u["id"] for u in splits["train"])
    wavs = {u["id"]: np.round(np.clip(u["wav"], -1, 1) * 32767) / 32767 for u in splits["train"]}
    for b in batches:  # every crop is a slice of its clip
        crop, full = b["audio"][0], wavs[b["id"][0]]
        cands = np.flatnonzero(np.abs(full[: len(full) - len(crop) + 1] - crop[0]) < 1e-6)
        starts = [s for s in cands if np.allclose(full[s : s + len(crop)], crop, atol=1e-6)]
        assert starts, b["id"][0]


def test_tfds_eval_batches_carry_labels(tfds_dir):
    data_dir, splits = tfds_dir
    batches = list(eval_batches(_cfg(data_dir), sample_rate=SR, split="valid", batch_size=4))
    got = {u: r for b in batches for u, r, v in zip(b["id"], b["label_noise_w"], b["valid"]) if v}
    assert got == {u["id"]: u["labels"]["noise_w"] for u in splits["valid"]}
    assert {k for k in batches[0] if k.startswith("label_")} == {f"label_{n}" for n in LABELS}


def test_tfds_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="tfds_data_dir"):
        ensure_dataset(_cfg(str(tmp_path / "none")), SR)
