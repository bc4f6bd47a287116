"""The stage-1 bottlenecks (`bottleneck.kind`: f3, vae, plain): shapes, deterministic inference,
the VAE's KL term on known Gaussians, no noise in the plain one, and a stage-1 run of each kind
that feeds stage 2 and the tokenizer."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from f3_jax import exports, parallel, stages
from f3_jax.config import ConfigError
from f3_jax.inference.tokenizer import Tokenizer
from f3_jax.models.autoencoder import BOTTLENECKS, Autoencoder
from f3_jax.models.bottleneck import NormalizedNoisyBottleneck
from f3_jax.models.plain_bottleneck import PlainBottleneck
from f3_jax.models.vae_bottleneck import VAEBottleneck, kl_per_frame
from f3_jax.stages.autoencoder.trainer import AutoencoderTrainer
from f3_jax.stages.representation.trainer import RepresentationTrainer
from tests.ae_fixtures import synthetic_batch, tiny_ae_config
from tests.repr_fixtures import repr_batch, tiny_repr_config

MODULES = {
    "f3": lambda: NormalizedNoisyBottleneck(8),
    "vae": lambda: VAEBottleneck(8, min_std=1e-4),
    "plain": lambda: PlainBottleneck(8),
}
RNGS = {"params": jax.random.key(0), "noise": jax.random.key(1)}


def _apply(module, h, train: bool, noise_seed: int = 2):
    variables = module.init(RNGS, h)
    return module.apply(variables, h, train=train, rngs={"noise": jax.random.key(noise_seed)})


@pytest.mark.parametrize("kind", BOTTLENECKS)
def test_shapes_and_deterministic_inference(kind):
    h = jax.random.normal(jax.random.key(5), (3, 7, 12))
    z, z_in, sigma = _apply(MODULES[kind](), h, train=False)
    assert z.shape == z_in.shape == (3, 7, 8) and sigma.shape == (3,)
    assert jnp.array_equal(z, z_in) and jnp.all(sigma == 0)
    z2, _, _ = _apply(MODULES[kind](), h, train=False, noise_seed=9)
    assert jnp.array_equal(z, z2)  # no randomness at inference
    zt, zt_in, _ = _apply(MODULES[kind](), h, train=True)
    np.testing.assert_allclose(zt, z, atol=1e-6)  # the clean latents do not depend on train
    assert zt_in.shape == z.shape


def test_plain_has_no_noise_and_no_normalization():
    h = 5.0 + 3.0 * jax.random.normal(jax.random.key(5), (4, 6, 12))
    module = PlainBottleneck(8)
    variables = module.init(RNGS, h)
    z, z_in, sigma = module.apply(variables, h, train=True, rngs={"noise": jax.random.key(3)})
    assert jnp.array_equal(z, z_in) and jnp.all(sigma == 0)
    p = variables["params"]["proj"]
    np.testing.assert_allclose(z, h @ p["kernel"].value + p["bias"].value, rtol=1e-5, atol=1e-5)
    assert set(variables) == {"params"} and module.train_terms(z, sigma) == {}


def test_kl_term_on_known_gaussians():
    zeros, ones = jnp.zeros((1, 2, 4)), jnp.ones((1, 2, 4))
    np.testing.assert_allclose(kl_per_frame(zeros, ones), 0.0, atol=1e-6)  # the prior itself
    mean, std = 0.5 * ones, 2.0 * ones
    # per channel: m^2 + s^2 - log s^2 - 1 = 0.25 + 4 - log 4 - 1 (2 x KL in nats), 4 channels
    want = 4 * (0.25 + 4.0 - math.log(4.0) - 1.0)
    np.testing.assert_allclose(kl_per_frame(mean, std), want, rtol=1e-6)
    # against a Monte Carlo estimate of 2 KL(N(m, s^2) || N(0, 1)) = 2 E[log q - log p]
    x = 0.5 + 2.0 * jax.random.normal(jax.random.key(0), (200_000,))
    log_q = -0.5 * ((x - 0.5) / 2.0) ** 2 - math.log(2.0)
    log_p = -0.5 * x**2
    np.testing.assert_allclose(2 * float(jnp.mean(log_q - log_p)), want / 4, rtol=0.02)


def test_vae_samples_with_softplus_std_and_floor():
    h = jax.random.normal(jax.random.key(5), (256, 4, 12))
    module = VAEBottleneck(8, min_std=0.5)
    variables = module.init(RNGS, h)
    mean, sample, std = module.apply(variables, h, train=True, rngs={"noise": jax.random.key(3)})
    assert std.shape == mean.shape and float(jnp.min(std)) > 0.5
    p = variables["params"]["proj"]
    stats = h @ p["kernel"].value + p["bias"].value
    np.testing.assert_allclose(mean, stats[..., :8], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, jax.nn.softplus(stats[..., 8:]) + 0.5, rtol=1e-5)
    eps = (sample - mean) / std  # the reparameterized sample's noise is standard normal
    assert abs(float(jnp.mean(eps))) < 0.05 and abs(float(jnp.std(eps)) - 1.0) < 0.05
    terms = module.train_terms(mean, std)
    np.testing.assert_allclose(terms["kl"], kl_per_frame(mean, std), rtol=1e-6)


def test_unknown_kind_names_the_field():
    config = tiny_ae_config(**{"bottleneck.kind": "vqvae"})
    with pytest.raises(ConfigError, match="bottleneck.kind"):
        stages.check_config(config, 1)


def _mesh():
    cfg = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
    return parallel.make_mesh(cfg, jax.devices()[:1])


def _random_variables(model, length: int) -> dict:
    """The model's variables with small random values, without compiling its init."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init(RNGS, jnp.zeros((1, length)), train=False))

    def leaf(a):
        scale, offset = (0.1, 1.0) if a.ndim <= 1 else (0.05, 0.0)  # gains, alphas near 1
        return (offset + scale * rng.standard_normal(a.shape)).astype(a.dtype)

    return jax.tree.map(leaf, nn.unbox(shapes))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{kind: a stage-1 workdir with an export of that kind (random weights)}."""
    out = {}
    for kind in BOTTLENECKS:
        config = tiny_ae_config(**{"bottleneck.kind": kind})
        workdir = str(tmp_path_factory.mktemp(f"ae_{kind}"))
        exports.write(workdir, _random_variables(Autoencoder.from_config(config), 800), config, 0)
        out[kind] = workdir
    return out


@pytest.mark.parametrize("kind", BOTTLENECKS)
def test_checkpoint_records_its_kind_and_feeds_the_tokenizer(exported, kind):
    tok = Tokenizer.from_checkpoint(exported[kind])
    assert tok.config.bottleneck.kind == kind
    wav = synthetic_batch(tok.config, seed=2)["audio"][1]
    z = tok.encode(wav)
    assert z.shape == (len(wav) // tok.hop, 8) and np.all(np.isfinite(z))
    np.testing.assert_array_equal(tok.encode(wav), z)  # deterministic
    assert tok.decode(z).shape == (len(wav),)


@pytest.mark.parametrize("kind", ["vae", "plain"])  # f3's is tests/test_train_repr.py's
def test_checkpoint_of_each_kind_feeds_stage2(exported, kind, tmp_path):
    """Stage 2 reads the export, encodes with it, and its whole step traces (compiling it is
    the slow test below)."""
    config = tiny_repr_config(str(tmp_path), **{"autoencoder.workdir": exported[kind]})
    trainer = RepresentationTrainer(config, _mesh())
    assert trainer.ae.config.bottleneck.kind == kind
    batch = parallel.global_batch(trainer.host_batch(repr_batch(config)), trainer.mesh)
    z, fmask = jax.jit(trainer.ae.latents)(trainer.ae.variables, batch["audio"], batch["mask"])
    assert z.shape == (8, 80, 8) and np.all(np.isfinite(np.asarray(z)))
    _, metrics = trainer.lower_train_step(batch).out_info
    assert {"loss/total", "loss/rq_mtp", "loss/transcript"} <= set(metrics)


@pytest.mark.parametrize("kind", BOTTLENECKS)
def test_stage1_step_has_the_bottleneck_terms(kind):
    """The VAE's KL is a loss term (logged as loss/kl); the others add none (traced only)."""
    config = tiny_ae_config(**{"bottleneck.kind": kind, "train.adversarial_start": 10})
    trainer = AutoencoderTrainer(config, _mesh())
    batch = parallel.global_batch(synthetic_batch(config), trainer.mesh)
    _, metrics = trainer.lower_train_step(batch).out_info
    assert ("loss/kl" in metrics) == (kind == "vae")


@pytest.mark.slow  # three stage-1 and two stage-2 steps to compile: minutes on 2 cores
@pytest.mark.parametrize("kind", BOTTLENECKS)
def test_trained_checkpoint_of_each_kind_feeds_stage2(kind, tmp_path):
    config = tiny_ae_config(**{"bottleneck.kind": kind, "train.adversarial_start": 10})
    trainer = AutoencoderTrainer(config, _mesh())
    batch = parallel.global_batch(synthetic_batch(config), trainer.mesh)
    state, metrics = trainer.train_step(trainer.initial_state(), batch, 0)
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss/total"])
    if kind == "vae":
        assert np.isfinite(metrics["loss/kl"]) and metrics["loss/kl"] > 0
    workdir = str(tmp_path / "ae")
    trainer.export(workdir, state, 1)
    config2 = tiny_repr_config(str(tmp_path), **{"autoencoder.workdir": workdir})
    trainer2 = RepresentationTrainer(config2, _mesh())
    batch2 = parallel.global_batch(trainer2.host_batch(repr_batch(config2)), trainer2.mesh)
    _, metrics2 = trainer2.train_step(trainer2.initial_state(), batch2, 0)
    assert np.isfinite(jax.device_get(metrics2)["loss/total"])
    assert Tokenizer.from_checkpoint(workdir).config.bottleneck.kind == kind
