"""The data-source registry: every entry resolves, and every reader of data.source uses it."""

import pytest

from f3_jax import config as config_lib
from f3_jax import stages
from f3_jax.config import data_defaults
from f3_jax.data import DataError, ensure_dataset, registry
from f3_jax.data.sources import open_split


@pytest.mark.parametrize("name", registry.names())
def test_every_entry_resolves_to_functions(name):
    entry = registry.get(name)
    for which in ("open_split", "ensure", "train_elements"):
        assert callable(entry.function(which)), (name, which)


def test_the_names_are_the_config_check(monkeypatch):
    c = stages.defaults_for("autoencoder")
    c.data.source = "nope"
    with pytest.raises(config_lib.ConfigError, match="array_record, tfds, webdataset"):
        stages.check_config(c, 1)
    # A new entry is all it takes for the check, open_split and ensure_dataset to know it.
    extra = registry.DataSource(
        "fake",
        "test",
        "tests.test_data_registry:_fake_open",
        "tests.test_data_registry:_fake_ensure",
        "tests.test_data_registry:_fake_open",
    )
    monkeypatch.setitem(registry.SOURCES, "fake", extra)
    c.data.source = "fake"
    stages.check_config(c, 1)
    d = data_defaults()
    d.source = "fake"
    with pytest.raises(DataError, match="fake ensure ran"):
        ensure_dataset(d, 8000)
    assert open_split(d, "valid", 8000) == ("valid", 8000)


def _fake_open(data_cfg, split, sample_rate):
    return split, sample_rate


def _fake_ensure(data_cfg, sample_rate):
    raise DataError("fake ensure ran")


def test_unknown_source_is_a_data_error():
    d = data_defaults()
    d.source = "parquet"
    with pytest.raises(DataError, match="use one of array_record, tfds, webdataset"):
        ensure_dataset(d, 8000)
