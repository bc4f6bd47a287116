"""Test setup: CPU only, 8 host devices so that sharding tests can build real meshes.

The flags must be set before jax is imported anywhere, hence at the top of conftest.
Tests that want one device use `jax.devices()[:1]`.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()


import pathlib  # noqa: E402

import pytest  # noqa: E402

_SUBPROCESS_WORDS = ("subprocess", "run_cli", "cli_setup", "cli_reference")


def pytest_collection_modifyitems(config, items):
    """Marks `cli` the tests of every file that runs the command lines (or other scripts) as
    subprocesses: `-m "not cli"` is the fast unit run, `-m cli` the integration run."""
    uses_subprocesses: dict[pathlib.Path, bool] = {}
    for item in items:
        path = pathlib.Path(str(item.fspath))
        if path not in uses_subprocesses:
            text = path.read_text(encoding="utf-8")
            uses_subprocesses[path] = any(word in text for word in _SUBPROCESS_WORDS)
        if uses_subprocesses[path]:
            item.add_marker(pytest.mark.cli)


# ---- the train CLI runs shared by test_train_cli.py and test_multiprocess.py -----------------


@pytest.fixture(scope="session")
def cli_setup(tmp_path_factory, pytestconfig):
    from tests import cli_runs

    return cli_runs.make_setup(tmp_path_factory.mktemp("train_cli"), pytestconfig)


@pytest.fixture(scope="session")
def cli_reference(cli_setup):
    """An uninterrupted run of N steps, one process of two devices: (workdir, Run)."""
    from tests import cli_runs

    workdir = cli_setup.tmp / "reference"
    return workdir, cli_runs.finish(cli_runs.start(cli_setup, workdir, "reference"))
