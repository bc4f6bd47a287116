"""A TFDS builder for the demo corpus, with plain tensor features so it needs no TensorFlow.

    python -m f3_jax.data.tfds_demo --source data/demo_corpus --data_dir data/tfds

reads a demo corpus written by demo_corpus.py and writes TFDS ArrayRecord files; configs then
use data.source = "tfds", data.tfds_name = "f3_demo_corpus", data.tfds_data_dir = the data_dir.
Features: audio int16 (L,), sample_rate int32, text, id, and label_<name> float32 scalars.
(tfds.features.Audio would need TensorFlow; TFDS catalog audio datasets such as librispeech use
it, so building those needs `pip install .[tfds-audio]`.)
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source

from f3_jax.data import records
from f3_jax.data.dataset_info import read_info
from f3_jax.data.errors import DataError

LABELS = ("length_scale", "noise_scale", "noise_w", "words_per_second")


class F3DemoCorpus(tfds.core.GeneratorBasedBuilder):
    """The demo corpus (synthetic piper speech with synthesis labels) as a TFDS dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    # No checksums or metadata files next to the code; finding the code's directory imports
    # importlib_resources, which tensorflow-datasets does not always pull in.
    code_path = None

    def __init__(self, *, source_dir: str | None = None, **kwargs):
        self._source_dir = source_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
            "sample_rate": tfds.features.Scalar(dtype=np.int32),
            "text": tfds.features.Text(),
            "id": tfds.features.Text(),
        }
        features.update({f"label_{n}": tfds.features.Scalar(dtype=np.float32) for n in LABELS})
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic English speech (piper joe-us voice) with synthesis labels.",
            features=tfds.features.FeaturesDict(features),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        info = read_info(self._source_dir or "")
        if info is None or "demo" not in info:
            raise DataError(f"source_dir={self._source_dir!r} is not a demo corpus")
        return {
            split: self._generate_examples(
                [os.path.join(self._source_dir, s) for s in info["splits"][split]["shards"]]
            )
            for split in info["splits"]
        }

    def _generate_examples(self, shards: list[str]):
        src = array_record_data_source.ArrayRecordDataSource(shards)
        for i in range(len(src)):
            u = records.decode(src[i])
            ex = {
                "audio": records.to_int16(u.read()),
                "sample_rate": u.sample_rate,
                "text": u.text,
                "id": u.uid,
            }
            ex.update({f"label_{n}": u.labels.get(n, np.nan) for n in LABELS})
            yield u.uid, ex


def build_tfds_demo(source_dir: str, data_dir: str) -> None:
    """Converts the demo corpus at source_dir into TFDS ArrayRecord files under data_dir."""
    builder = F3DemoCorpus(source_dir=source_dir, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Demo corpus -> TFDS (ArrayRecord files)")
    ap.add_argument("--source", required=True, help="demo corpus directory")
    ap.add_argument("--data_dir", required=True, help="TFDS data_dir to write")
    a = ap.parse_args(argv)
    build_tfds_demo(a.source, a.data_dir)
    print(f"wrote TFDS f3_demo_corpus to {a.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
