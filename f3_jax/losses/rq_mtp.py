"""RQ-MTP: cross-entropy of the heads' predictions of future frames' quantizer tokens.

Head h (0-based) at frame t predicts the tokens of frame t + h + 1. A target counts only when
frame t and frame t + h + 1 are both real (not padding, not past the clip's end).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def future_targets(
    tokens: jax.Array, valid: jax.Array, horizons: int
) -> tuple[jax.Array, jax.Array]:
    """(B, T, C) tokens, (B, T) mask -> (B, T, k, C) targets and (B, T, k) their mask."""
    t = tokens.shape[1]
    tok = jnp.pad(tokens, ((0, 0), (0, horizons), (0, 0)))
    val = jnp.pad(valid.astype(jnp.float32), ((0, 0), (0, horizons)))
    targets = jnp.stack([tok[:, h + 1 : h + 1 + t] for h in range(horizons)], axis=2)
    future = jnp.stack([val[:, h + 1 : h + 1 + t] for h in range(horizons)], axis=2)
    return targets, future * valid.astype(jnp.float32)[:, :, None]


def per_example_stats(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict:
    """Per-example sums: cross-entropy (B,), correct tokens (B, k, C), counted frames (B, k).

    logits (B, T, k, C, K), targets (B, T, k, C), mask (B, T, k).
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, T, k, C)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    m = mask[..., None]
    return {
        "ce": jnp.sum(ce * m, axis=(1, 2, 3)),
        "correct": jnp.sum(correct * m, axis=1),
        "count": jnp.sum(mask, axis=1),
    }


def chunked_per_example_stats(
    kernel: jax.Array,
    bias: jax.Array,
    r: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    dtype="float32",
) -> dict:
    """`per_example_stats` of the RQMTPHeads logits, one (head, codebook) chunk at a time.

    kernel (W, k, C, K) and bias (k, C, K) are the heads' DenseGeneral parameters
    (params["heads"]["heads"]), r (B, T, W) the representations, `dtype` the heads' compute
    dtype. The logits (B, T, k, C, K) are never materialized whole: a `lax.scan` over the k * C
    chunks computes each (B, T, K) slice, its cross-entropy and its argmax, and its body is
    rematerialized (`jax.checkpoint`), so the backward pass holds one chunk's logits at a time
    instead of all of them (and their gradient). The kernel is only reshaped and each chunk's
    slice read in place: a transposed copy of it would cost more memory than the logits at
    small batches. (XLA's cost analysis counts the loop body once; `f3_jax.flops.jaxpr_flops`
    counts every chunk.)
    """
    w, k, c, size = kernel.shape
    dtype = jnp.dtype(dtype)
    # Reshapes only (no transposed copies of the large kernel): chunk j = head j // C,
    # codebook j % C is read in place with a dynamic index.
    kernel = kernel.reshape(w, k * c, size)
    bias = bias.reshape(k * c, size)
    targets = targets.reshape(*targets.shape[:2], k * c)
    mask = mask.astype(jnp.float32)
    x = r.astype(dtype)

    @jax.checkpoint
    def chunk(j):
        kern = jax.lax.dynamic_index_in_dim(kernel, j, axis=1, keepdims=False)
        b = jax.lax.dynamic_index_in_dim(bias, j, axis=0, keepdims=False)
        target = jax.lax.dynamic_index_in_dim(targets, j, axis=2, keepdims=False)
        m = jax.lax.dynamic_index_in_dim(mask, j // c, axis=2, keepdims=False)
        logits = jnp.einsum("btw,wv->btv", x, kern.astype(dtype)) + b.astype(dtype)
        logits = logits.astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
        correct = (jnp.argmax(logits, axis=-1) == target).astype(jnp.float32)
        return jnp.sum(ce * m, axis=1), jnp.sum(correct * m, axis=1)

    # A rolled loop: unrolled, XLA keeps several chunks (and kernel-gradient copies) alive.
    ce, correct = jax.lax.map(chunk, jnp.arange(k * c))
    b = r.shape[0]
    return {
        "ce": jnp.sum(ce, axis=0),
        "correct": jnp.moveaxis(correct, 0, 1).reshape(b, k, c),
        "count": jnp.sum(mask, axis=1),
    }


def loss_and_accuracy(logits: jax.Array, targets: jax.Array, mask: jax.Array):
    """Mean cross-entropy over heads, codebooks and real frames; accuracy per horizon (k,)."""
    return loss_and_accuracy_from_stats(per_example_stats(logits, targets, mask), targets.shape[-1])


def loss_and_accuracy_from_stats(stats: dict, num_codebooks: int):
    """`loss_and_accuracy` from per-example stats (`per_example_stats` or the chunked ones)."""
    count = jnp.sum(stats["count"], axis=0)  # (k,)
    loss = jnp.sum(stats["ce"]) / jnp.maximum(jnp.sum(count) * num_codebooks, 1.0)
    accuracy = jnp.sum(stats["correct"], axis=(0, 2)) / jnp.maximum(count * num_codebooks, 1.0)
    return loss, accuracy


def copy_baseline_correct(targets: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """(B, k, C) correct counts of the baseline that predicts the current frame's token."""
    same = (targets == tokens[:, :, None, :]).astype(jnp.float32)
    return jnp.sum(same * mask[..., None], axis=1)
