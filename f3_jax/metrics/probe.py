"""Linear probe: multinomial logistic regression on frozen, time-pooled features.

Features (N, T, D) are pooled over time with a padding mask (mean, or mean and std), standardized
with statistics of the training set only, and a softmax classifier W x + b is fit by full-batch
(or seeded minibatch) Adam on cross-entropy + l2 / 2 * ||W||^2 for a fixed number of steps, all in
one jitted loop. Weights start at zero, so full-batch training is deterministic; the seed only
picks minibatches. Continuous labels (speaking rate, piper's length_scale, ...) become classes
by quantile binning with edges from the training values.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

_STD_FLOOR = 1e-6  # constant features: divide by this instead of zero


class ProbeParams(NamedTuple):
    """A fitted probe, standardization included: logits = ((x - mean) / std) @ w + b."""

    w: jax.Array  # (D, C)
    b: jax.Array  # (C,)
    mean: jax.Array  # (D,)
    std: jax.Array  # (D,)


def pool(
    features: np.ndarray, mask: np.ndarray | None = None, with_std: bool = False
) -> np.ndarray:
    """Masked mean over time: (N, T, D), mask (N, T) -> (N, D), or (N, 2D) with the std appended."""
    x = np.asarray(features, dtype=np.float64)  # float64: long sums of squares stay exact enough
    m = np.ones(x.shape[:2]) if mask is None else np.asarray(mask, dtype=np.float64)
    count = np.maximum(m.sum(axis=1, keepdims=True), 1.0)  # all-padding rows pool to zero
    mean = np.einsum("ntd,nt->nd", x, m) / count
    if not with_std:
        return mean.astype(np.float32)
    var = np.einsum("ntd,nt->nd", np.square(x - mean[:, None]), m) / count
    return np.concatenate([mean, np.sqrt(var)], axis=-1).astype(np.float32)


def quantile_edges(values: np.ndarray, num_bins: int) -> np.ndarray:
    """The num_bins - 1 inner edges that split `values` into equally populated bins."""
    qs = np.arange(1, num_bins) / num_bins
    return np.quantile(np.asarray(values, dtype=np.float64), qs)


def quantile_bins(
    values: np.ndarray, num_bins: int, edges_from: np.ndarray | None = None
) -> np.ndarray:
    """Continuous values -> int class in [0, num_bins) by quantiles of `edges_from` (or values).

    Pass the training values as `edges_from` when binning test values, so that no test
    statistics leak into the classes. A value equal to an edge goes to the upper bin.
    """
    edges = quantile_edges(values if edges_from is None else edges_from, num_bins)
    return np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right").astype(
        np.int32
    )


def _loss(wb, x, y, l2):
    w, b = wb
    logits = x @ w + b
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * l2 * jnp.sum(jnp.square(w))


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "learning_rate", "batch_size"))
def _train(x, y, key, l2, *, num_classes, steps, learning_rate, batch_size):
    tx = optax.adam(learning_rate)
    wb = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
    grad_fn = jax.grad(_loss)

    def step(carry, step_key):
        wb, opt_state = carry
        if batch_size is None:
            xb, yb = x, y
        else:
            idx = jax.random.choice(step_key, x.shape[0], (batch_size,), replace=False)
            xb, yb = x[idx], y[idx]
        updates, opt_state = tx.update(grad_fn(wb, xb, yb, l2), opt_state)
        return (optax.apply_updates(wb, updates), opt_state), None

    (wb, _), _ = jax.lax.scan(step, (wb, tx.init(wb)), jax.random.split(key, steps))
    return wb


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    num_classes: int,
    *,
    l2: float = 1e-3,
    steps: int = 500,
    learning_rate: float = 0.05,
    batch_size: int | None = None,
    seed: int = 0,
) -> ProbeParams:
    """Fits a softmax classifier on pooled features (N, D) and int labels in [0, num_classes)."""
    x = np.asarray(x_train, dtype=np.float32)
    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), _STD_FLOOR)
    if batch_size is not None and batch_size >= x.shape[0]:
        batch_size = None  # a minibatch as large as the data is the full batch
    w, b = _train(
        jnp.asarray((x - mean) / std),
        jnp.asarray(y_train, dtype=jnp.int32),
        jax.random.key(seed),
        jnp.float32(l2),
        num_classes=int(num_classes),
        steps=int(steps),
        learning_rate=float(learning_rate),
        batch_size=batch_size,
    )
    return ProbeParams(w, b, jnp.asarray(mean), jnp.asarray(std))


def predict(params: ProbeParams, x: np.ndarray) -> np.ndarray:
    """Most likely class of each pooled feature row (N,) int32."""
    z = (jnp.asarray(x, dtype=jnp.float32) - params.mean) / params.std
    return np.asarray(jnp.argmax(z @ params.w + params.b, axis=-1), dtype=np.int32)


def probe_accuracy(params: ProbeParams, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict(params, x) == np.asarray(y)))


def evaluate_probe(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    *,
    train_mask: np.ndarray | None = None,
    test_mask: np.ndarray | None = None,
    with_std: bool = False,
    num_bins: int | None = None,
    **fit_kwargs,
) -> dict[str, float]:
    """Pools (if 3-D), fits on train, scores on test.

    Labels are categorical (any ints or strings; mapped to contiguous classes), or continuous
    when `num_bins` is given: then quantile classes with edges from the training labels.
    `chance` is the test accuracy of always answering the training set's majority class.
    Extra keyword arguments go to `fit_probe`.
    """
    x_tr = pool(train_feats, train_mask, with_std) if np.ndim(train_feats) == 3 else train_feats
    x_te = pool(test_feats, test_mask, with_std) if np.ndim(test_feats) == 3 else test_feats
    y_tr, y_te, num_classes = _classes(train_labels, test_labels, num_bins)
    params = fit_probe(x_tr, y_tr, num_classes, **fit_kwargs)
    majority = np.bincount(y_tr, minlength=num_classes).argmax()
    return {
        "accuracy": probe_accuracy(params, x_te, y_te),
        "chance": float(np.mean(y_te == majority)),
        "num_train": int(len(y_tr)),
        "num_test": int(len(y_te)),
    }


def _classes(train_labels, test_labels, num_bins) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels -> contiguous int classes for train and test, and the number of classes."""
    if num_bins is not None:
        y_tr = quantile_bins(train_labels, num_bins)
        y_te = quantile_bins(test_labels, num_bins, edges_from=train_labels)
        return y_tr, y_te, int(num_bins)
    tr, te = np.asarray(train_labels), np.asarray(test_labels)
    vocab = np.unique(np.concatenate([tr, te]))  # a test-only class is simply never predicted
    return np.searchsorted(vocab, tr), np.searchsorted(vocab, te), len(vocab)
