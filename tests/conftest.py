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

# Moved to the slow run to keep the default run under 20 minutes on a 2-core CI machine
# (2026-12-01: 38 min with them, measured with --durations on an idle 2-core Xeon). Each has a
# cheaper sibling in the default run; the figures are their times in that run.
SLOW_IN_CI = (
    # multi-host equality and signals: 260 s (the error cases of two processes stay)
    "tests/test_multiprocess.py::test_sigterm_to_one_process",
    "tests/test_multiprocess.py::test_two_processes_continue",
    "tests/test_multiprocess.py::test_a_two_process_checkpoint_resumes",
    "tests/test_multiprocess.py::test_a_one_process_checkpoint_resumes",
    "tests/test_multiprocess.py::test_sigkill_of_one_process",
    # more of the same failure kinds (validation and a deleted file stay): 170 s
    "tests/test_train_failures.py::test_a_failure_after_a_step_saves_that_step[summary",
    "tests/test_train_failures.py::test_a_failure_after_a_step_saves_that_step[sample",
    "tests/test_train_failures.py::test_unreadable_latest_checkpoint_resumes_from_the_"
    "previous[truncate]",
    "tests/test_train_failures.py::test_unreadable_latest_checkpoint_resumes_from_the_"
    "previous[metadata]",
    "tests/test_train_failures.py::test_resume_logs_the_changed_config_fields",
    "tests/test_train_failures.py::test_the_lock_of_a_dead_run_is_taken_over",
    # the stage redesign's regression runs retrain three stages: 164 s
    "tests/test_stage_regression.py",
    # single real runs or compiles of 20-70 s each
    "tests/test_progress.py::test_eta_of_a_real_run",
    "tests/test_eval.py::test_watch_evaluates_each_new_checkpoint",
    "tests/test_bottlenecks.py::test_checkpoint_of_each_kind_feeds_stage2",
    "tests/test_benchmarks.py::test_loop_stalls_tiny",
    "tests/test_benchmarks.py::test_codec_rtf_tiny",
    "tests/test_train_repr.py::test_batch_without_text_skips_the_llm_term",
    "tests/test_train_flow.py::test_export_is_self_contained_for_generation",
    "tests/test_data_webdataset.py::test_train_cli_from_tar_shards_and_resume",
    "tests/test_remat_scan.py::test_flow_head_remat_same_gradients",
    "tests/test_remat_scan.py::test_autoencoder_remat_same_parameters_and_gradients",
    "tests/test_ablation_configs.py::test_stage2_step_has_the_objectives_terms",
    "tests/test_models_ae.py::test_discriminators_on_shared_spectra_equal_their_own",
    "tests/test_train_ae.py::test_state_is_split_over_the_mesh[data2_fsdp4]",  # data4_tp2 stays
    "tests/test_train_ae.py::test_restore_onto_a_different_mesh[data2_fsdp4]",
    "tests/test_train_ae.py::test_sharded_step_equals_single_device[data2_fsdp4]",
    "tests/test_train_failures.py::test_a_second_trainer_on_a_busy_workdir",  # test_workdir_lock
    "tests/test_cli_errors.py::test_user_error_is_one_line_with_status_2[demo_corpus_over_",
    # 2026-12-02, 19.4 min on two workers: two more of 55-60 s. The README chain asserts the
    # ahead-compiled first step in each stage's log (this one counts the compiles); the peer
    # benchmark's tiny run needs torch, which CI does not install.
    "tests/test_first_step.py::test_the_first_call_runs_the_program_compiled_ahead",
    "tests/test_benchmarks.py::test_peer_codec_tiny",
)


# Files whose tests share session fixtures: one pytest-xdist worker runs them all, so that the
# fixture (the train CLI's reference run) is made once.
_SAME_WORKER = {"test_train_cli.py": "train_cli", "test_multiprocess.py": "train_cli"}
# The longest groups first (seconds on 2 cores, 2026-12-01), so that the two workers end
# together: run last, the README chain alone kept one worker busy for 7 minutes at the end.
_LONGEST_FIRST = (
    "test_readme_e2e.py",  # 470
    "train_cli",  # 290
    "test_train_ae.py",  # 150
    "test_train_repr.py",  # 140
    "test_train_flow.py",  # 120
    "test_train_failures.py",  # 110
    "test_eval.py",  # 100
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Marks `cli` the tests of every file that runs the command lines (or other scripts) as
    subprocesses: `-m "not cli"` is the fast unit run, `-m cli` the integration run.

    Under pytest-xdist (`-n 2 --dist loadgroup --no-loadscope-reorder`, the README's test
    command) each file is one group, run by one worker, so module fixtures are made once (see
    _SAME_WORKER); the groups go out longest first (_LONGEST_FIRST: xdist's own reordering
    would send them by their number of tests)."""
    uses_subprocesses: dict[pathlib.Path, bool] = {}
    for item in items:
        path = pathlib.Path(str(item.fspath))
        item.add_marker(pytest.mark.xdist_group(_group(path)))
        if path not in uses_subprocesses:
            text = path.read_text(encoding="utf-8")
            uses_subprocesses[path] = any(word in text for word in _SUBPROCESS_WORDS)
        if uses_subprocesses[path]:
            item.add_marker(pytest.mark.cli)
        if any(item.nodeid.startswith(prefix) for prefix in SLOW_IN_CI):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(pathlib.Path(str(item.fspath))), len(rank)))


def _group(path: pathlib.Path) -> str:
    return _SAME_WORKER.get(path.name, path.name)


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
