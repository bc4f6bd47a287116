"""The optimizers of the stages: AdamW with warmup and decay, the guarded update, the EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(
    peak: float, warmup_steps: int, total_steps: int, kind: str
) -> optax.Schedule:
    if kind == "constant":
        after = optax.constant_schedule(peak)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(peak, max(1, total_steps - warmup_steps))
    else:
        raise ValueError(f"config.optim.schedule={kind!r}: use constant or cosine")
    if warmup_steps <= 0:
        return after
    warm = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warm, after], [warmup_steps])


def adamw(schedule: optax.Schedule, optim_cfg) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(optim_cfg.grad_clip),
        optax.adamw(
            schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay
        ),
    )


def guarded_update(tx: optax.GradientTransformation, params, opt_state, grads):
    """One optimizer step, or none at all when any gradient is NaN or Inf.

    Returns (params, opt_state, applied, grad_norm); a skipped step leaves both trees exactly
    as they were, so a single bad batch cannot poison the parameters or Adam's moments.
    """
    grad_norm = optax.tree.norm(grads)
    applied = jnp.isfinite(grad_norm)
    safe_grads = jax.tree.map(lambda g: jnp.where(applied, g, jnp.zeros_like(g)), grads)
    updates, new_opt = tx.update(safe_grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(applied, a, b), new, old)
    return keep(new_params, params), keep(new_opt, opt_state), applied, grad_norm


def ema_update(ema, params, decay: float):
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
