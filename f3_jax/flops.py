"""FLOPs of a step counted from its jaxpr: matrix products and convolutions, every scan
iteration (XLA's cost analysis counts a loop body once), the costliest branch of a cond."""

from __future__ import annotations

import math

import jax
import jax.extend.core as jex_core

from f3_jax.parallel import mesh_context


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
