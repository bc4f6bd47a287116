"""Least-squares GAN and feature-matching losses over the `Discriminators` output list.

`outputs` is a list with one (logits, feature_maps) pair per sub-discriminator. As in
HiFi-GAN and DAC, losses are summed over sub-discriminators; feature matching is the mean L1
over the layers of each sub-discriminator. All results are float32 scalars.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Outputs = Sequence[tuple[jax.Array, Sequence[jax.Array]]]


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


def lsgan_discriminator_loss(real_outputs: Outputs, fake_outputs: Outputs) -> jax.Array:
    """sum_d mean((1 - D(real))^2) + mean(D(fake)^2). Pass fake audio with stop_gradient."""
    loss = jnp.zeros((), jnp.float32)
    for (real, _), (fake, _) in zip(real_outputs, fake_outputs, strict=True):
        loss = loss + jnp.mean(jnp.square(1.0 - _f32(real))) + jnp.mean(jnp.square(_f32(fake)))
    return loss


def lsgan_generator_loss(fake_outputs: Outputs) -> jax.Array:
    """sum_d mean((1 - D(fake))^2)."""
    loss = jnp.zeros((), jnp.float32)
    for fake, _ in fake_outputs:
        loss = loss + jnp.mean(jnp.square(1.0 - _f32(fake)))
    return loss


def feature_matching_loss(real_outputs: Outputs, fake_outputs: Outputs) -> jax.Array:
    """sum_d mean_layers mean|F_real - F_fake|; real features are treated as constants."""
    loss = jnp.zeros((), jnp.float32)
    for (_, real_feats), (_, fake_feats) in zip(real_outputs, fake_outputs, strict=True):
        per_layer = [
            jnp.mean(jnp.abs(jax.lax.stop_gradient(_f32(r)) - _f32(f)))
            for r, f in zip(real_feats, fake_feats, strict=True)
        ]
        loss = loss + sum(per_layer) / len(per_layer)
    return loss
