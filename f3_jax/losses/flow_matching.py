"""Rectified-flow (flow matching) loss of the stage-3 patch flow head, and the stop loss.

Convention, shared with f3_jax/sampling.py and f3_jax/models/flow_head.py: t = 0 is noise and
t = 1 is data,

    x_t = (1 - t) * noise + t * x1,      noise ~ N(0, I),

and the network regresses the velocity d x_t / d t = x1 - noise. Sampling integrates
dx/dt = v(x, t) from t = 0 (noise) to t = 1.

One t is drawn per patch, either uniform in [0, 1] or logit-normal (t = sigmoid(m + s * n), as
in Stable Diffusion 3, which spends more training on the middle of the path). Losses are means
over valid patches only; padded patches (mask False) contribute nothing, not even gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

TIME_SCHEDULES = ("uniform", "logit_normal")


def sample_flow_time(
    key: jax.Array,
    shape: tuple[int, ...],
    schedule: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> jax.Array:
    """Flow times in [0, 1] (float32) of the given shape."""
    if schedule == "uniform":
        return jax.random.uniform(key, shape, jnp.float32)
    if schedule == "logit_normal":
        return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, shape, jnp.float32))
    raise ValueError(f"time schedule {schedule!r}: use one of {TIME_SCHEDULES}")


def interpolate(noise: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = (1 - t) * noise + t * x1, with t (...) broadcast over the trailing dims of x1."""
    t = t.reshape(t.shape + (1,) * (x1.ndim - t.ndim))
    return (1 - t) * noise + t * x1


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of values over mask True; 0 when nothing is valid (no NaN from empty batches)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def flow_matching_loss(
    velocity_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x1: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    time_schedule: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> jax.Array:
    """Masked MSE between velocity_fn(x_t, t) and x1 - noise.

    x1: data patches (..., P, D) (any number of trailing event dims); mask: (...) bool, one entry
    per patch, its shape a prefix of x1's; velocity_fn(x_t (like x1), t (like mask)) -> v (like
    x1). Per patch the squared error is averaged over its elements, then over valid patches.
    """
    x1 = x1.astype(jnp.float32)
    time_key, noise_key = jax.random.split(key)
    t = sample_flow_time(time_key, mask.shape, time_schedule, logit_mean, logit_std)
    noise = jax.random.normal(noise_key, x1.shape, jnp.float32)
    v = velocity_fn(interpolate(noise, x1, t), t).astype(jnp.float32)
    event_axes = tuple(range(mask.ndim, x1.ndim))
    per_patch = jnp.mean(jnp.square(v - (x1 - noise)), axis=event_axes)
    # where, not only a weight: a NaN/inf prediction on a padded patch stays out of the value.
    return masked_mean(jnp.where(mask, per_patch, 0.0), mask)


def stop_loss(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, pos_weight: float = 1.0
) -> jax.Array:
    """Masked sigmoid cross-entropy of stop logits (...) against 0/1 targets (...).

    pos_weight scales the positive term: a stop is one patch per utterance, so positives are rare.
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    per = -(
        pos_weight * targets * jax.nn.log_sigmoid(logits)
        + (1 - targets) * jax.nn.log_sigmoid(-logits)
    )
    return masked_mean(jnp.where(mask, per, 0.0), mask)
