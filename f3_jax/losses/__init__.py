"""losses of f3_jax."""
