"""Pieces every stage's trainer shares: optimizers, guarded updates, EMA, sharded init."""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import optax
from jax.sharding import AbstractMesh

from f3_jax import parallel
from f3_jax.models.llm_prompt import tokenize_texts


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


def state_layout(make_boxed_state: Callable[[], dict], mesh) -> tuple[dict, dict]:
    """(abstract state, shardings) from tracing alone: nothing is computed or compiled.

    `make_boxed_state` returns the state with `nn.LogicallyPartitioned` parameter boxes; the
    boxes decide the shardings and are stripped from the abstract state.
    """
    abstract_boxed = jax.eval_shape(make_boxed_state)
    shardings = parallel.shardings_of(abstract_boxed, mesh)
    return nn.unbox(abstract_boxed), shardings


def mesh_context(mesh):
    """`jax.set_mesh` for a concrete mesh, `use_abstract_mesh` for an AbstractMesh (tracing and
    lowering only)."""
    if isinstance(mesh, AbstractMesh):
        return jax.sharding.use_abstract_mesh(mesh)
    return jax.set_mesh(mesh)


def is_abstract(mesh) -> bool:
    return isinstance(mesh, AbstractMesh)


def sharded_init(make_boxed_state: Callable[[], dict], mesh, shardings) -> dict:
    """Builds the state directly on its shardings (no device ever holds all of it)."""
    init = jax.jit(lambda: nn.unbox(make_boxed_state()), out_shardings=shardings)
    with jax.set_mesh(mesh):
        return init()


def abstract_like(state_shardings, abstract_state):
    """ShapeDtypeStructs carrying the target shardings, for restoring onto a mesh."""
    return jax.tree.map(
        lambda s, a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        state_shardings,
        abstract_state,
    )


def text_batch(local: dict, tokenizer, max_text_tokens: int) -> dict:
    """Stages 2 and 3: the step's inputs from a numpy batch (audio, or the latent cache's
    latents) with the transcripts tokenized for the LLM."""
    ids, mask = tokenize_texts(tokenizer, local["text"], max_text_tokens)
    if "latents" in local:  # a training batch of the latent cache
        inputs = {"latents": local["latents"], "frame_mask": local["frame_mask"]}
    else:
        inputs = {"audio": local["audio"], "mask": local["mask"]}
    return inputs | {"text_ids": ids, "text_mask": mask}


def jaxpr_flops(closed_jaxpr) -> float:
    """FLOPs of the matrix products and convolutions of a (closed) jaxpr: 2 * multiply-adds,
    counted through every sub-jaxpr, a scan's body `length` times, a cond's costliest branch.

    XLA's cost analysis counts a loop's body once, so it misses all but one iteration of
    scanned layers (`scan_layers`) and of chunked losses; this count does not. Elementwise
    work is left out; rematerialized (recomputed) products are counted where they run.
    """
    jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            k = math.prod(lhs.shape[d] for d in contract)
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
            per_output = rhs.shape[spec[1]] * math.prod(rhs.shape[d] for d in spec[2:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        else:
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(sub, (jex_core.Jaxpr, jex_core.ClosedJaxpr)):
                        total += jaxpr_flops(sub)
    return total


def step_flops(fn, mesh, *args) -> float:
    """Per-device FLOPs of one call of `fn(*args)` (arrays or ShapeDtypeStructs): the global
    `jaxpr_flops` divided by the devices of `mesh` (the step is split over all of them)."""
    with mesh_context(mesh):
        closed = jax.make_jaxpr(fn)(*args)
    return jaxpr_flops(closed) / max(1, math.prod(mesh.shape.values()))
