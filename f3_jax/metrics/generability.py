"""Generability: how well a small autoregressive model predicts the next latent patch.

Stage 3 generates latents patch by patch; latents whose next patch follows from the previous
ones are easier to generate. This measures it the same way for any autoencoder: the split's
latent sequences are cut into patches of `patch_frames` frames, a small MLP reads the previous
`context_patches` patches (zeros before the start, with a flag per position saying which are
real) and predicts the next patch, trained by Adam on squared error for a fixed number of steps
with a fixed seed (one jitted loop) on the first sequences, and scored on the last
`test_fraction` of them (whole utterances the model never saw).

The error is normalized by the latent variance, so that variants of any scale compare:
    nmse = sum (prediction - next)^2 / sum (next - channel mean)^2
over the held-out patches, with the channel means of the training sequences: 1 is no better
than predicting the mean, 0 is perfect. Inputs and targets are standardized by the training
sequences' channel means and one overall scale (the root mean channel variance), which the ratio
does not depend on but the optimizer does. A copy baseline (every frame of the next patch
predicted as the last frame before it) is reported beside it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class GenerabilityBudget:
    """The model and its training budget: the same for every variant compared."""

    patch_frames: int = 4  # frames per predicted patch (stage 3's adapter.downsample)
    context_patches: int = 8  # previous patches the model reads
    steps: int = 500  # Adam steps
    batch_size: int = 128  # windows per step
    hidden: int = 256  # width of the MLP's two hidden layers
    learning_rate: float = 1e-3
    test_fraction: float = 0.25  # the last sequences, held out
    seed: int = 0


def _windows(seqs: list[np.ndarray], b: GenerabilityBudget) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (N, K * (P * D + 1)), targets (N, P * D)) of every patch after the first."""
    inputs, targets = [], []
    k = b.context_patches
    for seq in seqs:
        n = len(seq) // b.patch_frames
        if n < 2:
            continue
        patches = seq[: n * b.patch_frames].reshape(n, -1)
        padded = np.concatenate([np.zeros((k, patches.shape[1]), patches.dtype), patches])
        real = np.concatenate([np.zeros(k), np.ones(n)])[:, None].astype(patches.dtype)
        for t in range(1, n):
            ctx = np.concatenate([padded[t : t + k], real[t : t + k]], axis=1)
            inputs.append(ctx.reshape(-1))
            targets.append(patches[t])
    width = k * (b.patch_frames * seqs[0].shape[1] + 1) if seqs else 0
    if not inputs:
        return np.zeros((0, width), np.float32), np.zeros((0, 0), np.float32)
    return np.stack(inputs).astype(np.float32), np.stack(targets).astype(np.float32)


def _mlp_init(key, sizes: list[int]) -> list[tuple[jax.Array, jax.Array]]:
    """LeCun-normal hidden layers; a zero output layer, so training starts from predicting
    the mean (nmse 1) whatever the seed."""
    keys = jax.random.split(key, len(sizes) - 1)
    layers = [
        (jax.random.normal(k, (a, b)) * np.sqrt(1.0 / a), jnp.zeros((b,)))
        for k, a, b in zip(keys[:-1], sizes[:-2], sizes[1:-1])
    ]
    return [*layers, (jnp.zeros((sizes[-2], sizes[-1])), jnp.zeros((sizes[-1],)))]


def _mlp(params, x: jax.Array) -> jax.Array:
    for w, b in params[:-1]:
        x = jax.nn.gelu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


@functools.partial(jax.jit, static_argnames=("budget",))
def _fit(x, y, key, *, budget: GenerabilityBudget):
    tx = optax.adam(budget.learning_rate)
    k_init, k_steps = jax.random.split(key)
    h = budget.hidden
    params = _mlp_init(k_init, [x.shape[1], h, h, y.shape[1]])
    loss = lambda p, xb, yb: jnp.mean(jnp.square(_mlp(p, xb) - yb))
    size = min(budget.batch_size, x.shape[0])

    def step(carry, step_key):
        params, opt = carry
        idx = jax.random.choice(step_key, x.shape[0], (size,), replace=False)
        updates, opt = tx.update(jax.grad(loss)(params, x[idx], y[idx]), opt)
        return (optax.apply_updates(params, updates), opt), None

    (params, _), _ = jax.lax.scan(
        step, (params, tx.init(params)), jax.random.split(k_steps, budget.steps)
    )
    return params


def _split(seqs: list[np.ndarray], fraction: float) -> tuple[list, list]:
    n_test = min(max(1, int(np.ceil(fraction * len(seqs)))), len(seqs) - 1)
    return seqs[: len(seqs) - n_test], seqs[len(seqs) - n_test :]


def generability(
    sequences: list[np.ndarray], budget: GenerabilityBudget | None = None
) -> dict[str, float]:
    """nmse of the trained predictor and of the copy baseline on held-out sequences of (T, D)
    latents, and the numbers of training and test windows; NaN when there is too little
    (fewer than two sequences with two patches or more)."""
    b = budget or GenerabilityBudget()
    seqs = [np.asarray(s, np.float64) for s in sequences if len(s) >= 2 * b.patch_frames]
    nan = {"nmse": float("nan"), "copy_nmse": float("nan"), "num_train": 0.0, "num_test": 0.0}
    if len(seqs) < 2 or b.steps < 1:
        return nan
    train, test = _split(seqs, b.test_fraction)
    frames = np.concatenate(train)
    mean = frames.mean(axis=0)
    scale = max(float(np.sqrt(frames.var(axis=0).mean())), 1e-8)
    norm = lambda ss: [(s - mean) / scale for s in ss]
    (x_tr, y_tr), (x_te, y_te) = _windows(norm(train), b), _windows(norm(test), b)
    if not len(x_tr) or not len(x_te):
        return nan
    params = _fit(jnp.asarray(x_tr), jnp.asarray(y_tr), jax.random.key(b.seed), budget=b)
    pred = np.asarray(_mlp(params, jnp.asarray(x_te)), np.float64)
    denominator = max(float(np.sum(np.square(y_te))), 1e-12)
    return {
        "nmse": float(np.sum(np.square(pred - y_te)) / denominator),
        "copy_nmse": float(np.sum(np.square(_copy_last(x_te, b) - y_te)) / denominator),
        "num_train": float(len(x_tr)),
        "num_test": float(len(x_te)),
    }


def _copy_last(inputs: np.ndarray, b: GenerabilityBudget) -> np.ndarray:
    """The last frame of the newest context patch, repeated over the next patch."""
    per_patch = inputs.shape[1] // b.context_patches
    last_patch = inputs[:, -per_patch:-1]  # without its "real" flag
    dim = last_patch.shape[1] // b.patch_frames
    return np.tile(last_patch[:, -dim:], (1, b.patch_frames)).astype(np.float64)
