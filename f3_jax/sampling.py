"""ODE samplers of the stage-3 flow head: Euler and Heun from noise (t = 0) to data (t = 1).

Time runs as in f3_jax/losses/flow_matching.py: x_0 = temperature * noise, dx/dt = v(x, t),
x_1 is the sample. The grid is uniform, t_i = i / num_steps; Euler uses one velocity evaluation
per step, Heun (explicit trapezoid) two, and is second order.

Classifier-free guidance: v = v_uncond + scale * (v_cond - v_uncond), both halves from one
batched call of velocity_fn on [x; x] with drop_condition [False...; True...]. A Python scale of
exactly 1 skips the unconditional half. Everything is jit-compatible (lax.fori_loop); num_steps
and method must be static.

velocity_fn(x (B, ...), t (B,) float32, drop_condition (B,) bool) -> v (B, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

SAMPLERS = ("euler", "heun")
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def guided_velocity(
    velocity_fn: VelocityFn, guidance_scale: float | jax.Array = 1.0
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """v(x, t) with classifier-free guidance; t is a scalar, broadcast over the batch."""

    def conditional(x: jax.Array, t: jax.Array) -> jax.Array:
        batch = x.shape[0]
        ts = jnp.full((batch,), t, jnp.float32)
        return velocity_fn(x, ts, jnp.zeros((batch,), bool)).astype(jnp.float32)

    if isinstance(guidance_scale, (int, float)) and guidance_scale == 1.0:
        return conditional

    def guided(x: jax.Array, t: jax.Array) -> jax.Array:
        batch = x.shape[0]
        ts = jnp.full((2 * batch,), t, jnp.float32)
        drop = jnp.arange(2 * batch) >= batch
        v = velocity_fn(jnp.concatenate([x, x]), ts, drop).astype(jnp.float32)
        v_cond, v_uncond = v[:batch], v[batch:]
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    return guided


def sample_flow(
    velocity_fn: VelocityFn,
    noise: jax.Array,
    *,
    num_steps: int = 16,
    method: str = "heun",
    guidance_scale: float | jax.Array = 1.0,
    temperature: float | jax.Array = 1.0,
) -> jax.Array:
    """Integrate from temperature * noise (B, ...) at t = 0 to t = 1; returns float32 x_1."""
    if method not in SAMPLERS:
        raise ValueError(f"sampler {method!r}: use one of {SAMPLERS}")
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: need at least one step")
    v = guided_velocity(velocity_fn, guidance_scale)
    dt = 1.0 / num_steps

    def euler(i, x):
        return x + dt * v(x, i * dt)

    def heun(i, x):
        t = i * dt
        v0 = v(x, t)
        v1 = v(x + dt * v0, t + dt)
        return x + 0.5 * dt * (v0 + v1)

    x0 = temperature * noise.astype(jnp.float32)
    return jax.lax.fori_loop(0, num_steps, euler if method == "euler" else heun, x0)
