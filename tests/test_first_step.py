"""The train step compiled on a thread before the first step (f3_jax/aot/first_step.py) is the
program the loop's first call runs: that call compiles nothing (the same jaxpr and lowering,
hence the same executable as a call that compiled it itself)."""

import jax
import numpy as np
import pytest

from f3_jax import parallel
from f3_jax.aot.first_step import FirstStep
from tests.ae_fixtures import synthetic_batch, tiny_ae_config
from tests.test_train_ae import _trainer

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class _Compiles:
    """Counts XLA compilations while active."""

    def __init__(self):
        self.count = 0

    def __call__(self, name: str, seconds: float, **_) -> None:
        self.count += name == BACKEND_COMPILE

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


@pytest.fixture(scope="module")
def setup():
    config = tiny_ae_config()
    # the loop is under test, not the model: no GAN terms, one loss scale (as tests/cli_runs)
    config.discriminator.use_mpd = False
    config.train.adversarial_start = 1000
    config.loss.mel_window_sizes, config.loss.mel_bins = (128,), (16,)
    config.loss.stft_fft_sizes = (128,)
    return config, synthetic_batch(config)


def test_the_first_call_runs_the_program_compiled_ahead(setup):
    config, host_batch = setup
    trainer = _trainer(config, (1, 1, 1), jax.devices()[:1])
    ahead = FirstStep(trainer, 0)
    state = trainer.initial_state()
    ahead.wait()
    assert ahead.error is None and ahead.seconds > 0
    batch = parallel.global_batch(host_batch, trainer.mesh)
    with _Compiles() as compiles:
        state, metrics = trainer.train_step(state, batch, 0)
        jax.block_until_ready(state)
    assert compiles.count == 0, "the first step compiled again"
    assert np.isfinite(float(metrics["loss/total"]))


def test_a_failed_compile_is_logged_and_left_to_the_first_call(setup, caplog):
    config, _ = setup
    trainer = _trainer(config, (1, 1, 1), jax.devices()[:1])

    def broken(*args, **kwargs):
        raise RuntimeError("no such program")

    trainer.lower_train_step = broken
    ahead = FirstStep(trainer, 0)
    with caplog.at_level("INFO"):
        ahead.wait()
    assert isinstance(ahead.error, RuntimeError)
    assert "the first step compiles it" in caplog.text and "no such program" in caplog.text
